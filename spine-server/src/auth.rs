//! Authentication and authorization at the gRPC edge (DESIGN.md §2, §6).
//!
//! Every request except health checks carries a token in its `authorization` metadata
//! (`Bearer <base64>`). [`Auth::interceptor`] authenticates it (signature and form, once per
//! distinct token thanks to [`Verifier`]'s memory) and leaves an [`Access`] in the request's
//! extensions; each handler then authorizes what the request does:
//!
//! - a map write (create, update) only by a token that speaks for the map's writer CA;
//! - reads (get, list, history, subscribe) by any token admitted to the map's app;
//! - membership, digest and peer (Raft) traffic only by an admin token: one that admits the
//!   [`ADMIN_APP`] app and the [`ADMIN_CA`] CA — an unconstrained root token does.

use std::sync::Arc;
use std::time::SystemTime;

use authz_aggregate::{Authenticated, Token, TokenError, Verifier};
use sharing_map::{AppName, CaName, MapName};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// The app an admin token must admit.
pub const ADMIN_APP: &str = "spine-system";
/// The CA an admin token must admit.
pub const ADMIN_CA: &str = "spine-admin";
/// The metadata key tokens travel in.
pub const METADATA_KEY: &str = "authorization";

/// How a node checks requests.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Every request is allowed (`--no-auth`; local experiments only).
    Disabled,
    /// Tokens issued under this root key are required.
    Tokens(Arc<Verifier>),
}

/// What an authenticated request may do; found in the request's extensions.
#[derive(Clone, Debug)]
pub enum Access {
    /// Authentication is off.
    Open,
    /// The request's token.
    Token(Arc<Authenticated>),
}

impl Auth {
    /// Authenticates a request's token and records the [`Access`] it grants.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Access, Status> {
        let verifier = match self {
            Auth::Disabled => return Ok(Access::Open),
            Auth::Tokens(v) => v,
        };
        let Some(value) = metadata.get(METADATA_KEY) else {
            return Err(Status::unauthenticated(
                "this call needs a token: send `authorization: Bearer <token>` (spinectl: --token, --token-file or SPINE_TOKEN; `spine dev` writes an admin token to spine-data/admin.token)",
            ));
        };
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
        let encoded = text.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })?;
        let token = Token::from_base64(encoded).map_err(token_status)?;
        let found = verifier.authenticate(&token).map_err(token_status)?;
        // An expired token is refused whatever the call.
        found
            .admits(None, None, SystemTime::now())
            .map_err(token_status)?;
        Ok(Access::Token(found))
    }

    /// A tonic interceptor that authenticates every request it sees.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let auth = self.clone();
        move |mut request: Request<()>| {
            let access = auth.authenticate(request.metadata())?;
            request.extensions_mut().insert(access);
            Ok(request)
        }
    }
}

fn token_status(e: TokenError) -> Status {
    Status::unauthenticated(format!("bad token: {e}"))
}

impl Access {
    /// The access the interceptor recorded for `request`.
    pub fn of<T>(request: &Request<T>) -> Result<Access, Status> {
        request
            .extensions()
            .get::<Access>()
            .cloned()
            .ok_or_else(|| {
                Status::unauthenticated("the request was not authenticated (no token checked)")
            })
    }

    /// May write `map` of `app`: the token speaks for the map's writer CA (for a CA's private
    /// state map: an admin token, as CA hosts have).
    pub fn write(&self, app: &AppName, map: &MapName) -> Result<(), Status> {
        self.private(map)?;
        let Access::Token(t) = self else {
            return Ok(());
        };
        let writer = map.writer();
        t.admits(Some(app), Some(&writer), SystemTime::now())
            .map_err(|e| {
                Status::permission_denied(format!(
                    "only the writer CA {writer} may write map {map} in app {app}, and this token does not speak for it: {e}"
                ))
            })
    }

    /// May read maps of `app`.
    pub fn read(&self, app: &AppName) -> Result<(), Status> {
        let Access::Token(t) = self else {
            return Ok(());
        };
        t.admits(Some(app), None, SystemTime::now()).map_err(|e| {
            Status::permission_denied(format!(
                "this token is not for app {app}, so it may not read its maps: {e}"
            ))
        })
    }

    /// May read `map` of `app`: any token admitted to the app, but only an admin token for a
    /// CA's private state map.
    pub fn read_map(&self, app: &AppName, map: &MapName) -> Result<(), Status> {
        self.read(app)?;
        self.private(map)
    }

    /// Private state maps (`*-castate`) are for CA hosts and admins only.
    fn private(&self, map: &MapName) -> Result<(), Status> {
        if !map.is_private_state() {
            return Ok(());
        }
        self.admin(&format!("map {map}, a CA's private state,"))
    }

    /// Whether the request may see private state maps (lists and prefix subscriptions leave
    /// them out otherwise).
    pub fn sees_private(&self) -> bool {
        self.admin("").is_ok()
    }

    /// May run admin calls (membership, digest, peer traffic).
    pub fn admin(&self, what: &str) -> Result<(), Status> {
        let Access::Token(t) = self else {
            return Ok(());
        };
        let (Ok(app), Ok(ca)) = (AppName::parse(ADMIN_APP), CaName::parse(ADMIN_CA)) else {
            return Err(Status::internal("the admin principal's names do not parse"));
        };
        t.admits(Some(&app), Some(&ca), SystemTime::now())
            .map_err(|e| {
                Status::permission_denied(format!(
                    "{what} needs an admin token (one that admits CA {ADMIN_CA} of app {ADMIN_APP}): {e}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_aggregate::{Constraints, RootKey, issue};
    use tonic::metadata::MetadataValue;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn with_token(token: &str) -> Result<MetadataMap, Box<dyn std::error::Error>> {
        let mut md = MetadataMap::new();
        md.insert(
            METADATA_KEY,
            MetadataValue::try_from(format!("Bearer {token}"))?,
        );
        Ok(md)
    }

    #[test]
    fn writers_readers_and_admins() -> TestResult {
        let root = RootKey::generate();
        let auth = Auth::Tokens(Arc::new(Verifier::new(root.public())));
        let app = AppName::parse("acme-shop")?;
        let alice = issue(
            &root,
            &Constraints::any()
                .app(&app)
                .ca(&CaName::parse("alice-phone")?),
        )?;
        let access = auth.authenticate(&with_token(&alice.to_base64())?)?;
        access.write(&app, &MapName::parse("alice-phone-prices")?)?;
        for other in ["bob-phone-x", "alice-tablet-x"] {
            let e = access
                .write(&app, &MapName::parse(other)?)
                .err()
                .ok_or("write allowed")?;
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        }
        access.read(&app)?;
        assert!(access.read(&AppName::parse("acme-mail")?).is_err());
        assert_eq!(
            access.admin("membership").err().map(|e| e.code()),
            Some(tonic::Code::PermissionDenied)
        );
        let admin = issue(&root, &Constraints::any())?;
        auth.authenticate(&with_token(&admin.to_base64())?)?
            .admin("membership")?;
        // A CA's private state map: not even its own CA's token reaches it; admins do.
        let private = MapName::parse("alice-phone-castate")?;
        for e in [
            access.write(&app, &private),
            access.read_map(&app, &private),
        ] {
            assert_eq!(
                e.err().map(|e| e.code()),
                Some(tonic::Code::PermissionDenied)
            );
        }
        assert!(!access.sees_private());
        let admin = auth.authenticate(&with_token(&admin.to_base64())?)?;
        admin.write(&app, &private)?;
        admin.read_map(&app, &private)?;
        assert!(admin.sees_private());
        access.read_map(&app, &MapName::parse("alice-phone-prices")?)?;
        Ok(())
    }

    #[test]
    fn missing_malformed_and_foreign_tokens_are_unauthenticated() -> TestResult {
        let root = RootKey::generate();
        let auth = Auth::Tokens(Arc::new(Verifier::new(root.public())));
        let foreign = issue(&RootKey::generate(), &Constraints::any())?;
        let mut bad_prefix = MetadataMap::new();
        bad_prefix.insert(METADATA_KEY, MetadataValue::try_from("Basic abc")?);
        for md in [
            MetadataMap::new(),
            bad_prefix,
            with_token("!!!")?,
            with_token(&foreign.to_base64())?,
        ] {
            let e = auth.authenticate(&md).err().ok_or("accepted")?;
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        }
        assert!(matches!(
            Auth::Disabled.authenticate(&MetadataMap::new())?,
            Access::Open
        ));
        Ok(())
    }
}
