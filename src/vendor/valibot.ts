/**
 * The part of valibot that troupe uses, and the only module that imports it. `npm run build` (and
 * the compiled-agent builds of the tests and benchmarks) replaces this module's output with one
 * file holding only these functions (scripts/bundle-vendored.ts): every job process loads the
 * schemas, and valibot's whole 206 KB entry costs a fresh process about 8.5 ms to load against
 * 2 ms for this 21 KB subset. A function missing here is a type error where it is used.
 */
export type { BaseIssue, InferInput, InferOutput, ObjectEntries, ObjectSchema } from "valibot";
export {
  array,
  boolean,
  check,
  custom,
  fallback,
  finite,
  gtValue,
  literal,
  maxLength,
  maxValue,
  minLength,
  minValue,
  number,
  object,
  optional,
  picklist,
  pipe,
  rawCheck,
  rawTransform,
  regex,
  safeInteger,
  safeParse,
  string,
  transform,
  unknown,
  variant,
} from "valibot";
