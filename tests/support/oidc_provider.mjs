// A real OpenID provider for the console tests: the npm package
// oidc-provider (8.x), with its own login and consent pages
// (devInteractions: any password; the login name is the account id).
//
// Usage: node oidc_provider.mjs NODE_MODULES_DIR CONFIG_JSON
// CONFIG_JSON: { host, port (0 = any), cert_file, key_file, client_id,
//   client_secret, redirect_uri, accounts: { id: { claims... } },
//   native_clients: [public client ids], id_token_ttl: { id: seconds },
//   jwk_file: optional path of the signing key (JWK) to use or create
//   (its PKCS#1 DER form written beside it as JWK_FILE.der, for tests that
//   sign tokens the provider would not issue),
//   backchannel_logout_uri: optional, the native clients' back-channel
//   logout URL (sessions required: logout tokens carry sid) }
// Native clients may use refresh tokens: one is issued with every code
// (like Entra ID for a public client asking offline_access), expiring
// with the provider session.
// Prints "ISSUER <url>" once listening. Signing keys (RSA, RS256) are
// generated at every start under a fresh kid: a restart on the same port
// is a key rotation.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, configFile] = process.argv.slice(2);
const cfg = JSON.parse(fs.readFileSync(configFile, 'utf8'));
const { default: Provider } = await import(
  pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')).href
);

// With jwk_file: the key in it (written there if the file does not exist
// yet), so two providers can sign with the same key.
let jwk;
if (cfg.jwk_file && fs.existsSync(cfg.jwk_file)) {
  jwk = JSON.parse(fs.readFileSync(cfg.jwk_file, 'utf8'));
} else {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  jwk = {
    ...privateKey.export({ format: 'jwk' }),
    kid: `k-${crypto.randomBytes(6).toString('hex')}`,
    alg: 'RS256',
    use: 'sig',
  };
  if (cfg.jwk_file) {
    fs.writeFileSync(cfg.jwk_file, JSON.stringify(jwk));
    fs.writeFileSync(`${cfg.jwk_file}.der`, privateKey.export({ type: 'pkcs1', format: 'der' }));
  }
}

const server = https.createServer({
  cert: fs.readFileSync(cfg.cert_file),
  key: fs.readFileSync(cfg.key_file),
});
server.listen(cfg.port || 0, cfg.host, () => {
  const issuer = `https://${cfg.host}:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: cfg.client_id,
      client_secret: cfg.client_secret,
      redirect_uris: [cfg.redirect_uri],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }, ...(cfg.native_clients || []).map((id) => ({
      // Like komugate client's app registration: public, loopback redirect.
      client_id: id,
      application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'],
      response_types: ['code'],
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      token_endpoint_auth_method: 'none',
      ...(cfg.backchannel_logout_uri ? {
        backchannel_logout_uri: cfg.backchannel_logout_uri,
        backchannel_logout_session_required: true,
      } : {}),
    }))],
    features: {
      deviceFlow: { enabled: true },
      backchannelLogout: { enabled: true },
    },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      IdToken: (ctx) => (cfg.id_token_ttl || {})[ctx?.oidc?.account?.accountId] || 3600,
    },
    jwks: { keys: [jwk] },
    // The console must send PKCE; the provider refuses it otherwise.
    pkce: { methods: ['S256'], required: () => true },
    // Like Entra ID: the groups in the ID token itself.
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub', 'groups'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
    },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    findAccount: async (ctx, id) => ({
      accountId: id,
      async claims() {
        return { sub: id, ...(cfg.accounts[id] || {}) };
      },
    }),
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`ISSUER ${issuer} KID ${jwk.kid}`);
});
