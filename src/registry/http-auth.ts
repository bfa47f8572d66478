import type { IncomingMessage } from "node:http";
import { AuthError, bearerToken, type Credentials, type Role, verifyToken } from "../auth/tokens.ts";
import { HttpError } from "../http/respond.ts";

/** Checks a request's bearer token for one of `roles`: 401 when missing or bad, 403 for a wrong role. */
export function bearerAuthorizer(credentials: Credentials) {
  return async (req: IncomingMessage, roles: readonly Role[]) => {
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new HttpError(401, "missing bearer token");
    try {
      return await verifyToken(credentials, token, roles);
    } catch (error) {
      const message = error instanceof AuthError ? error.message : "invalid token";
      throw new HttpError(message.includes("cannot") ? 403 : 401, message);
    }
  };
}
