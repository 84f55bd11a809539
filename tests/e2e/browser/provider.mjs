// An OpenID Connect provider (node-oidc-provider) on loopback for the browser tests.
// argv: port, the homeserver's callback URL, its back-channel logout URL.
// Anyone signs in with any password on the provider's own (development) pages; the login
// typed becomes the subject. Prints one JSON line once it listens.
import * as oidc from "oidc-provider";

const [port, callback, backchannel] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new oidc.Provider(issuer, {
  clients: [
    {
      client_id: "matrix",
      client_secret: "s3cret",
      client_name: "Our homeserver",
      redirect_uris: [callback],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
      backchannel_logout_uri: backchannel,
      backchannel_logout_session_required: false,
    },
  ],
  claims: {
    openid: ["sub"],
    profile: ["name", "preferred_username"],
    email: ["email", "email_verified"],
  },
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // The provider refuses to call loopback addresses (its SSRF protection, a dispatcher it
  // passes to fetch); the homeserver it calls back (back-channel logout) is on loopback here.
  fetch(url, { dispatcher: _checked, ...options }) {
    return globalThis.fetch(url, options);
  },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: `Person ${sub}`,
          preferred_username: sub,
          email: `${sub}@corp.example`,
          email_verified: true,
        };
      },
    };
  },
});
provider.on("backchannel.error", (_client, error) => {
  const cause = String(error?.cause ?? "");
  console.error(JSON.stringify({ event: "backchannel.error", error: String(error), cause }));
});
provider.on("backchannel.success", () => {
  console.log(JSON.stringify({ event: "backchannel.success" }));
});

const server = provider.listen(Number(port), "127.0.0.1", () => {
  console.log(JSON.stringify({ event: "listening", issuer }));
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
