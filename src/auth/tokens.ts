import { errors as joseErrors, jwtVerify, SignJWT } from "jose";
import { z } from "zod";

/**
 * HS256 tokens minted from an API key and secret. The key is the issuer (so several keys can share a
 * registry later); the role claim says what the bearer may do; participants also carry a room claim.
 */
export const ROLES = ["worker", "dispatcher", "participant"] as const;
export type Role = (typeof ROLES)[number];

export interface Credentials {
  apiKey: string;
  apiSecret: string;
  /**
   * The longest lifetime (exp − iat, in seconds) a token may have; longer ones are refused, and so is
   * a token without `exp`. Default DEFAULT_MAX_TOKEN_LIFETIME_SECONDS (seven days).
   */
  maxTokenLifetimeSeconds?: number;
}

export const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 7 * 24 * 3600;

const maxLifetime = (credentials: Credentials) =>
  credentials.maxTokenLifetimeSeconds ?? DEFAULT_MAX_TOKEN_LIFETIME_SECONDS;

export interface MintRequest {
  role: Role;
  /** Seconds; default one hour. */
  ttl?: number;
  room?: string;
  subject?: string;
}

const claims = z.object({
  iss: z.string(),
  role: z.enum(ROLES),
  room: z.string().optional(),
  sub: z.string().optional(),
});
const lifetime = z.object({ exp: z.number(), iat: z.number().optional() });
export type TokenClaims = z.infer<typeof claims>;

export class AuthError extends Error {
  override readonly name = "AuthError";
}

const secretKey = (secret: string) => new TextEncoder().encode(secret);

export async function mintToken(credentials: Credentials, request: MintRequest): Promise<string> {
  if (request.role === "participant" && !request.room) throw new AuthError("a participant token needs a room");
  checkTtl(credentials, request.ttl);
  const jwt = new SignJWT({ role: request.role, ...(request.room ? { room: request.room } : {}) })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuer(credentials.apiKey)
    .setIssuedAt()
    .setExpirationTime(`${Math.max(1, Math.round(request.ttl ?? 3600))}s`);
  if (request.subject) jwt.setSubject(request.subject);
  return jwt.sign(secretKey(credentials.apiSecret));
}

/** Refuses to mint a token the registry would refuse to accept. */
export function checkTtl(credentials: Credentials, ttl: number | undefined): void {
  if (ttl !== undefined && ttl > maxLifetime(credentials)) {
    throw new AuthError(`a token lifetime of ${ttl} s is over the maximum of ${maxLifetime(credentials)} s`);
  }
}

/**
 * Tokens already verified, by their exact text: an HMAC check per request costs ~0.2 ms through
 * WebCrypto, and dispatchers reuse one token for many requests. Expiry is still checked every time.
 */
const verified = new Map<string, { secret: string; claims: TokenClaims; expiresAt: number }>();
const VERIFIED_CACHE_SIZE = 1_000;

function rememberVerified(token: string, secret: string, claims: TokenClaims, expiresAt: number): void {
  if (verified.size >= VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value as string);
  verified.set(token, { secret, claims, expiresAt });
}

function checkRole(claims: TokenClaims, allowed: readonly Role[]): TokenClaims {
  if (!allowed.includes(claims.role)) {
    throw new AuthError(`a ${claims.role} token cannot do this (needs ${allowed.join(" or ")})`);
  }
  return claims;
}

/** Verifies signature, expiry, issuer and role. Errors say why without echoing the token. */
export async function verifyToken(
  credentials: Credentials,
  token: string,
  allowed: readonly Role[],
): Promise<TokenClaims> {
  const cached = verified.get(token);
  if (cached && cached.secret === credentials.apiSecret && cached.claims.iss === credentials.apiKey) {
    if (Date.now() >= cached.expiresAt) {
      verified.delete(token);
      throw new AuthError("token expired");
    }
    return checkRole(cached.claims, allowed);
  }
  let payload: unknown;
  try {
    ({ payload } = await jwtVerify(token, secretKey(credentials.apiSecret), {
      algorithms: ["HS256"],
      issuer: credentials.apiKey,
    }));
  } catch (error) {
    if (error instanceof joseErrors.JWTExpired) throw new AuthError("token expired");
    throw new AuthError("invalid token");
  }
  const parsed = claims.safeParse(payload);
  if (!parsed.success) throw new AuthError("token has no valid role claim");
  const times = lifetime.safeParse(payload);
  if (!times.success) throw new AuthError("token has no expiry (exp): mint tokens with a lifetime");
  const { exp, iat = Date.now() / 1000 } = times.data;
  if (exp - iat > maxLifetime(credentials)) {
    throw new AuthError(`token lifetime over the maximum of ${maxLifetime(credentials)} s`);
  }
  rememberVerified(token, credentials.apiSecret, parsed.data, exp * 1000);
  return checkRole(parsed.data, allowed);
}

/** The token from an `Authorization: Bearer …` header, if any. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  const match = value ? /^Bearer\s+(\S+)$/i.exec(value.trim()) : null;
  return match?.[1];
}
