/**
 * A verified machine identity: what Sluice knows about the caller once its
 * token has passed every check. Everything here comes from the token; nothing
 * the client says in its startup packet (user, database) changes it.
 */
export interface Identity {
  /** `sub` claim. */
  subject: string;
  /** `iss` claim, exactly as configured. */
  issuer: string;
  /** Groups from the issuer's groups claim; validated as an array of strings. */
  groups: string[];
  /** All claims, for claim-based subject matching. Treat as read-only. */
  claims: Readonly<Record<string, unknown>>;
  /** SHA-256 (hex, first 32 chars) of the `jti`, or of the whole token when it has none: logs and audit refer to a token by this, never by its text. */
  tokenId: string;
  /**
   * When the gateway stops accepting the token: its `exp` plus
   * `identity.clock_tolerance`. A session logged in with it ends then
   * (`limits.end_at_token_expiry`).
   */
  expiresAt: Date;
}

export interface VerifyOptions {
  /**
   * The `aud` the token must carry instead of its issuer's configured
   * audience: the HTTP API's own (`api.audience`), so that a token minted
   * for the database listeners is not an API credential, nor the other way.
   */
  audience?: string;
}

/** What verifies a presented token. Implemented by identity/verifier.ts. */
export interface TokenVerifier {
  /** Resolves to the identity or rejects with a SluiceError whose code is one of the TOKEN_* / JWKS_* codes and whose message a person can act on. */
  verify(token: string, opts?: VerifyOptions): Promise<Identity>;
}
