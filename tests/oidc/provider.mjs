// A real OpenID provider for the OIDC sign-in tests: the certified `oidc-provider` package, with
// one confidential client, PKCE required, its development login page (any login name signs in as
// that account; no consent screen: the client is first-party) and a freshly generated RS256 key.
//
//   node provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET
//
// Two test controls beside the protocol (under /test/, never part of OpenID):
//   POST /test/accounts?id=ID&email=EMAIL&email_verified=true|false   what an account's claims say
//   POST /test/clock?offset=SECONDS   run the provider's clock that far off (an hour behind: the ID
//                                     tokens it issues have expired when they arrive)
import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const [port, redirectUri, clientId, clientSecret] = process.argv.slice(2);
if (!port || !redirectUri || !clientId || !clientSecret) {
  console.error('usage: node provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET');
  process.exit(2);
}

let offsetMs = 0;
const realNow = Date.now;
Date.now = () => realNow() + offsetMs;

const accounts = new Map();

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key', use: 'sig', alg: 'RS256' };

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  jwks: { keys: [signingKey] },
  cookies: { keys: ['test-only-cookie-key'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 120, Interaction: 600, Session: 3600, Grant: 3600 },
  async findAccount(ctx, id) {
    const account = accounts.get(id) ?? { email: `${id}@example.org`, email_verified: true };
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id, email: account.email, email_verified: account.email_verified };
      },
    };
  },
  // First-party client: every sign-in is granted the scopes it asks for, without a consent screen.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});

provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/test/accounts') {
    const { id, email } = ctx.query;
    accounts.set(id, { email, email_verified: ctx.query.email_verified === 'true' });
    ctx.status = 204;
    return undefined;
  }
  if (ctx.method === 'POST' && ctx.path === '/test/clock') {
    offsetMs = Number(ctx.query.offset) * 1000;
    ctx.status = 204;
    return undefined;
  }
  return next();
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`openid provider ready at ${issuer}`);
});
