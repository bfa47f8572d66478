/**
 * The part of valibot that troupe uses, and the only module that imports it. `npm run build` (and
 * the compiled-agent builds of the tests and benchmarks) replaces this module's output with one
 * file holding only these functions (scripts/bundle-vendored.ts): every job process loads the
 * schemas, and valibot's whole 206 KB entry costs a fresh process about 8.5 ms to load against
 * 2 ms for this 22 KB subset. A function missing here is a type error where it is used.
 *
 * So compiled troupe carries its own copy of these functions: an application's valibot
 * `setGlobalConfig` or `setGlobalMessage` reaches troupe's schemas only when troupe runs from its
 * sources, and the types (from the `valibot` dependency) may be of a later 1.x than the code.
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
