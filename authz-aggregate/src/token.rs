//! Attenuable tokens (biscuit-auth): issue under a deployment's root key, narrow offline, verify
//! against a principal.
//!
//! A token carries up to five constraints (DESIGN.md §6): app publisher, app local name, CA owner,
//! CA local name, expiry; a missing constraint means any. Each block of the token states the
//! constraints it adds twice: as Datalog checks, which biscuit enforces (`check if
//! ca_owner("alice")`, `check if time($t), $t < 2030-01-01T00:00:00Z`), and as a JSON summary in
//! the block's signed context, from which [`attenuate`] reads what the token already requires.
//! Biscuit evaluates the checks of every block and a block cannot make an earlier block's checks
//! pass, so appending can only narrow a token; [`attenuate`] additionally refuses a request
//! that would not narrow it ([`TokenError::Broader`]), so a holder learns at once that it cannot
//! move a token to another CA or extend its life.
//!
//! Expiry has one-second resolution: a token is valid while the verifier's clock, in whole
//! seconds since the epoch, is before its expiry.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use biscuit_auth::builder::{Algorithm, Term, date, string};
use biscuit_auth::error::{FailedCheck, Format, Logic, Token as BiscuitError};
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey,
};
use serde::{Deserialize, Serialize};
use sharing_map::{AppName, CaName, MIN_USER_LEN, MapName};

/// One of the five constraints a token can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintKind {
    /// The app's publisher (`acme` in `acme-shop`).
    AppPublisher,
    /// The app's local name (`shop` in `acme-shop`).
    AppLocal,
    /// The CA's owner (`alice` in `alice-phone`).
    CaOwner,
    /// The CA's local name (`phone` in `alice-phone`).
    CaLocal,
    /// The expiry time.
    Expiry,
}

impl ConstraintKind {
    /// The Datalog fact the authorizer states for this part of the principal.
    fn fact(self) -> &'static str {
        match self {
            ConstraintKind::AppPublisher => "app_publisher",
            ConstraintKind::AppLocal => "app_local",
            ConstraintKind::CaOwner => "ca_owner",
            ConstraintKind::CaLocal => "ca_local",
            ConstraintKind::Expiry => "time",
        }
    }

    const NAMES: [ConstraintKind; 4] = [
        ConstraintKind::AppPublisher,
        ConstraintKind::AppLocal,
        ConstraintKind::CaOwner,
        ConstraintKind::CaLocal,
    ];
}

impl fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConstraintKind::AppPublisher => "app publisher",
            ConstraintKind::AppLocal => "app local name",
            ConstraintKind::CaOwner => "CA owner",
            ConstraintKind::CaLocal => "CA local name",
            ConstraintKind::Expiry => "expiry",
        })
    }
}

/// Why a token operation failed. Tampered, expired, mismatched and too-broad tokens each have
/// their own variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The signature chain does not verify against the root public key.
    #[error(
        "token signature does not verify against the root public key: the token was altered or issued under another root key"
    )]
    Tampered,
    /// The token has expired.
    #[error("token expired at {expired_at:?}")]
    Expired {
        /// Its expiry.
        expired_at: SystemTime,
    },
    /// The principal does not satisfy one of the token's constraints.
    #[error("token requires {which} {required:?} but the principal has {actual:?}")]
    ConstraintMismatch {
        /// Which constraint.
        which: ConstraintKind,
        /// What the token requires.
        required: String,
        /// What the principal has.
        actual: String,
    },
    /// An attenuation would not narrow the token.
    #[error(
        "attenuation may only narrow a token: it requires {which} {current:?}, so {requested:?} would not narrow it"
    )]
    Broader {
        /// Which constraint.
        which: ConstraintKind,
        /// What the token already requires.
        current: String,
        /// What was asked for.
        requested: String,
    },
    /// A constraint value is not a valid name part.
    #[error("invalid {which} constraint {value:?}: {rule}")]
    InvalidConstraint {
        /// Which constraint.
        which: ConstraintKind,
        /// The value given.
        value: String,
        /// The rule it broke.
        rule: String,
    },
    /// The bytes are not a token of this system.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A key could not be read.
    #[error("invalid root key: {reason}")]
    BadKey {
        /// What is wrong.
        reason: String,
    },
}

/// A deployment's root key pair (Ed25519). Tokens are issued with its private half and verified
/// with its public half.
pub struct RootKey(KeyPair);

impl RootKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Self(KeyPair::new())
    }

    /// The key pair of a private key given as hex (64 hex digits), as [`Self::to_private_hex`]
    /// writes it.
    pub fn from_private_hex(hex: &str) -> Result<Self, TokenError> {
        let key = PrivateKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519).map_err(|e| {
            TokenError::BadKey {
                reason: format!("expected 64 hex digits of an Ed25519 private key: {e}"),
            }
        })?;
        Ok(Self(KeyPair::from(&key)))
    }

    /// The private key as hex. Keep it secret.
    pub fn to_private_hex(&self) -> String {
        self.0.private().to_bytes_hex()
    }

    /// The public half, which every verifier holds.
    pub fn public(&self) -> RootPublicKey {
        RootPublicKey(self.0.public())
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_tuple("RootKey").field(&self.public()).finish()
    }
}

/// The public half of a root key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootPublicKey(PublicKey);

impl RootPublicKey {
    /// Reads a public key given as hex (64 hex digits).
    pub fn from_hex(hex: &str) -> Result<Self, TokenError> {
        PublicKey::from_bytes_hex(hex.trim(), Algorithm::Ed25519)
            .map(Self)
            .map_err(|e| TokenError::BadKey {
                reason: format!("expected 64 hex digits of an Ed25519 public key: {e}"),
            })
    }

    /// The key as hex.
    pub fn to_hex(&self) -> String {
        self.0.to_bytes_hex()
    }
}

impl fmt::Debug for RootPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootPublicKey({})", self.to_hex())
    }
}

/// What a token is verified against: the app a request names and the CA it speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The app.
    pub app: AppName,
    /// The CA.
    pub ca: CaName,
}

impl Principal {
    /// The principal a request must be to write `map` in `app`: the map's writer CA.
    pub fn writer_of(app: &AppName, map: &MapName) -> Self {
        Self {
            app: app.clone(),
            ca: map.writer(),
        }
    }
}

/// The constraints of a token; `None` means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// The app's publisher.
    pub app_publisher: Option<String>,
    /// The app's local name.
    pub app_local: Option<String>,
    /// The CA's owner.
    pub ca_owner: Option<String>,
    /// The CA's local name.
    pub ca_local: Option<String>,
    /// The token is valid before this time (whole seconds).
    pub expiry: Option<SystemTime>,
}

impl Constraints {
    /// No constraint: a token for every principal, forever.
    pub fn any() -> Self {
        Self::default()
    }
    /// Only the app `app`.
    pub fn app(mut self, app: &AppName) -> Self {
        self.app_publisher = Some(app.publisher().to_string());
        self.app_local = Some(app.app().to_string());
        self
    }
    /// Only the CA `ca`.
    pub fn ca(mut self, ca: &CaName) -> Self {
        self.ca_owner = Some(ca.owner().to_string());
        self.ca_local = Some(ca.local().to_string());
        self
    }
    /// Only CAs of this owner.
    pub fn ca_owner(mut self, owner: &str) -> Self {
        self.ca_owner = Some(owner.to_string());
        self
    }
    /// Only CAs with this local name.
    pub fn ca_local(mut self, local: &str) -> Self {
        self.ca_local = Some(local.to_string());
        self
    }
    /// Only apps of this publisher.
    pub fn app_publisher(mut self, publisher: &str) -> Self {
        self.app_publisher = Some(publisher.to_string());
        self
    }
    /// Only apps with this local name.
    pub fn app_local(mut self, app: &str) -> Self {
        self.app_local = Some(app.to_string());
        self
    }
    /// Valid before `expiry` (rounded down to a whole second).
    pub fn expires_at(mut self, expiry: SystemTime) -> Self {
        self.expiry = Some(expiry);
        self
    }

    fn name(&self, kind: ConstraintKind) -> Option<&str> {
        match kind {
            ConstraintKind::AppPublisher => self.app_publisher.as_deref(),
            ConstraintKind::AppLocal => self.app_local.as_deref(),
            ConstraintKind::CaOwner => self.ca_owner.as_deref(),
            ConstraintKind::CaLocal => self.ca_local.as_deref(),
            ConstraintKind::Expiry => None,
        }
    }

    fn to_claims(&self) -> Result<Claims, TokenError> {
        for kind in ConstraintKind::NAMES {
            if let Some(value) = self.name(kind) {
                check_name_part(kind, value)?;
            }
        }
        Ok(Claims {
            app_publisher: self.app_publisher.clone(),
            app_local: self.app_local.clone(),
            ca_owner: self.ca_owner.clone(),
            ca_local: self.ca_local.clone(),
            expiry: self.expiry.map(epoch_secs),
        })
    }
}

/// Values are name parts (DESIGN.md §2): `[a-z0-9]+`, owners and publishers at least
/// [`MIN_USER_LEN`] long.
fn check_name_part(which: ConstraintKind, value: &str) -> Result<(), TokenError> {
    let fail = |rule: String| TokenError::InvalidConstraint {
        which,
        value: value.to_string(),
        rule,
    };
    if value.is_empty() {
        return Err(fail(
            "is empty; leave the constraint out to allow any".into(),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(fail(format!(
            "contains {bad:?}; name parts may only contain [a-z0-9]"
        )));
    }
    let user = matches!(
        which,
        ConstraintKind::AppPublisher | ConstraintKind::CaOwner
    );
    if user && value.len() < MIN_USER_LEN {
        return Err(fail(format!(
            "is shorter than {MIN_USER_LEN} characters, the shortest {which}"
        )));
    }
    Ok(())
}

fn epoch_secs(t: SystemTime) -> u64 {
    // Times before the epoch are long past: they expire a token at once.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_epoch_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// What one block adds, as stored in its signed context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_publisher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_local: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_local: Option<String>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiry: Option<u64>,
}

impl Claims {
    fn name(&self, kind: ConstraintKind) -> Option<&str> {
        match kind {
            ConstraintKind::AppPublisher => self.app_publisher.as_deref(),
            ConstraintKind::AppLocal => self.app_local.as_deref(),
            ConstraintKind::CaOwner => self.ca_owner.as_deref(),
            ConstraintKind::CaLocal => self.ca_local.as_deref(),
            ConstraintKind::Expiry => None,
        }
    }

    fn set_name(&mut self, kind: ConstraintKind, value: String) {
        match kind {
            ConstraintKind::AppPublisher => self.app_publisher = Some(value),
            ConstraintKind::AppLocal => self.app_local = Some(value),
            ConstraintKind::CaOwner => self.ca_owner = Some(value),
            ConstraintKind::CaLocal => self.ca_local = Some(value),
            ConstraintKind::Expiry => {}
        }
    }

    fn is_empty(&self) -> bool {
        self == &Claims::default()
    }

    /// The block: one check per constraint, and the claims as its context.
    fn block(&self) -> Result<BlockBuilder, TokenError> {
        let mut block = BlockBuilder::new();
        for kind in ConstraintKind::NAMES {
            if let Some(value) = self.name(kind) {
                let source = format!("check if {}({{value}})", kind.fact());
                block = block
                    .code_with_params(source, params([("value", string(value))]), HashMap::new())
                    .map_err(internal)?;
            }
        }
        if let Some(expiry) = self.expiry {
            block = block
                .code_with_params(
                    "check if time($now), $now < {expiry}",
                    params([("expiry", date(&from_epoch_secs(expiry)))]),
                    HashMap::new(),
                )
                .map_err(internal)?;
        }
        let context = serde_json::to_string(self).map_err(|e| internal(e.to_string()))?;
        Ok(block.context(context))
    }
}

fn params<const N: usize>(pairs: [(&str, Term); N]) -> HashMap<String, Term> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Biscuit refused Datalog we generated: a bug here, reported rather than panicking.
fn internal(e: impl fmt::Display) -> TokenError {
    TokenError::Malformed {
        reason: format!("internal error building a token block: {e}"),
    }
}

/// A serialized token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl Token {
    /// The token's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// A token from bytes (checked when used).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The token as URL-safe base64, for headers and command lines.
    pub fn to_base64(&self) -> String {
        URL_SAFE.encode(&self.0)
    }
    /// Reads a token written by [`Self::to_base64`].
    pub fn from_base64(text: &str) -> Result<Self, TokenError> {
        URL_SAFE
            .decode(text.trim())
            .map(Self)
            .map_err(|e| TokenError::Malformed {
                reason: format!("not URL-safe base64: {e}"),
            })
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A token is a credential: show its size, not its content.
        write!(f, "Token({} bytes)", self.0.len())
    }
}

/// Issues a token with `constraints`, signed by the root key.
pub fn issue(root: &RootKey, constraints: &Constraints) -> Result<Token, TokenError> {
    let claims = constraints.to_claims()?;
    let biscuit = Biscuit::builder()
        .merge(claims.block()?)
        .context(serde_json::to_string(&claims).map_err(|e| internal(e.to_string()))?)
        .build(&root.0)
        .map_err(|e| internal(format!("{e:?}")))?;
    serialize(&biscuit)
}

fn serialize(biscuit: &Biscuit) -> Result<Token, TokenError> {
    biscuit
        .to_vec()
        .map(Token)
        .map_err(|e| internal(format!("{e:?}")))
}

/// Parses and checks the signature chain, and reads every block's claims.
fn open(root: &RootPublicKey, token: &Token) -> Result<(Biscuit, Vec<Claims>), TokenError> {
    let biscuit = Biscuit::from(&token.0, root.0).map_err(|e| match e {
        BiscuitError::Format(
            Format::Signature(_)
            | Format::SealedSignature
            | Format::UnknownPublicKey
            | Format::InvalidSignatureSize(_)
            | Format::SignatureDeserializationError(_)
            | Format::BlockSignatureDeserializationError(_),
        ) => TokenError::Tampered,
        other => TokenError::Malformed {
            reason: other.to_string(),
        },
    })?;
    let mut claims = Vec::with_capacity(biscuit.block_count());
    for (index, (context, external)) in biscuit
        .context()
        .into_iter()
        .zip(biscuit.external_public_keys())
        .enumerate()
    {
        if external.is_some() {
            return Err(TokenError::Malformed {
                reason: format!("block {index} is a third-party block, which Spine never issues"),
            });
        }
        let parsed = context
            .as_deref()
            .map(serde_json::from_str::<Claims>)
            .transpose()
            .ok()
            .flatten()
            .ok_or_else(|| TokenError::Malformed {
                reason: format!("block {index} does not state its constraints"),
            })?;
        // The checks biscuit enforces must be exactly the ones the summary states, so that
        // [`Authenticated::admits`] (which reads the summary) decides like the Datalog does.
        let stated = parsed.block()?.to_string();
        let actual = biscuit
            .print_block_source(index)
            .map_err(|e| TokenError::Malformed {
                reason: e.to_string(),
            })?;
        if normalize(&stated) != normalize(&actual) {
            return Err(TokenError::Malformed {
                reason: format!(
                    "block {index} has checks Spine does not issue: {:?}",
                    actual.trim()
                ),
            });
        }
        claims.push(parsed);
    }
    Ok((biscuit, claims))
}

fn normalize(source: &str) -> String {
    source.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The constraints a token's blocks add up to: each name constraint as first required, the
/// earliest expiry. (Blocks that disagree on a name make the token match no principal.)
fn effective(claims: &[Claims]) -> Constraints {
    let mut sum = Claims::default();
    for block in claims {
        for kind in ConstraintKind::NAMES {
            if sum.name(kind).is_none()
                && let Some(value) = block.name(kind)
            {
                sum.set_name(kind, value.to_string());
            }
        }
        sum.expiry = match (sum.expiry, block.expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Constraints {
        app_publisher: sum.app_publisher,
        app_local: sum.app_local,
        ca_owner: sum.ca_owner,
        ca_local: sum.ca_local,
        expiry: sum.expiry.map(from_epoch_secs),
    }
}

/// Reads a token's constraints after checking its signature (not its expiry).
pub fn inspect(root: &RootPublicKey, token: &Token) -> Result<Constraints, TokenError> {
    let (_, claims) = open(root, token)?;
    Ok(effective(&claims))
}

/// Derives a narrower token, offline: adds the constraints of `narrower` the token does not have
/// yet and an earlier expiry. Refuses, with [`TokenError::Broader`], a name constraint that
/// differs from one the token already requires or an expiry later than the token's. Constraints
/// left `None` keep what the token has; a request that adds nothing returns the token unchanged.
pub fn attenuate(
    root: &RootPublicKey,
    token: &Token,
    narrower: &Constraints,
) -> Result<Token, TokenError> {
    let requested = narrower.to_claims()?;
    let (biscuit, claims) = open(root, token)?;
    let mut added = Claims::default();
    for kind in ConstraintKind::NAMES {
        let Some(value) = requested.name(kind) else {
            continue;
        };
        // Every block's requirement must be this value already, or absent.
        match claims
            .iter()
            .find_map(|c| c.name(kind).filter(|v| *v != value))
        {
            Some(current) => {
                return Err(TokenError::Broader {
                    which: kind,
                    current: current.to_string(),
                    requested: value.to_string(),
                });
            }
            None if claims.iter().any(|c| c.name(kind).is_some()) => {}
            None => added.set_name(kind, value.to_string()),
        }
    }
    if let Some(expiry) = requested.expiry {
        match claims.iter().filter_map(|c| c.expiry).min() {
            Some(current) if expiry > current => {
                return Err(TokenError::Broader {
                    which: ConstraintKind::Expiry,
                    current: format!("{current} s since the epoch"),
                    requested: format!("{expiry} s since the epoch"),
                });
            }
            Some(current) if expiry == current => {}
            _ => added.expiry = Some(expiry),
        }
    }
    if added.is_empty() {
        return Ok(token.clone());
    }
    let attenuated = biscuit
        .append(added.block()?)
        .map_err(|e| internal(format!("{e:?}")))?;
    serialize(&attenuated)
}

/// Verifies a token for `principal` at `now`: signature chain, expiry and every constraint of
/// every block. Returns the token's constraints.
pub fn verify(
    root: &RootPublicKey,
    token: &Token,
    principal: &Principal,
    now: SystemTime,
) -> Result<Constraints, TokenError> {
    let (biscuit, claims) = open(root, token)?;
    let facts = params([
        ("app_publisher", string(principal.app.publisher())),
        ("app_local", string(principal.app.app())),
        ("ca_owner", string(principal.ca.owner())),
        ("ca_local", string(principal.ca.local())),
        ("now", date(&now)),
    ]);
    let mut authorizer = AuthorizerBuilder::new()
        .code_with_params(
            "app_publisher({app_publisher}); app_local({app_local}); \
             ca_owner({ca_owner}); ca_local({ca_local}); time({now}); allow if true;",
            facts,
            HashMap::new(),
        )
        .map_err(internal)?
        // Five facts and at most a handful of checks per block; the time budget only guards
        // against a verifier starved of CPU failing valid tokens.
        .set_limits(AuthorizerLimits {
            max_facts: 1000,
            max_iterations: 100,
            max_time: Duration::from_millis(250),
        })
        .build(&biscuit)
        .map_err(|e| TokenError::Malformed {
            reason: e.to_string(),
        })?;
    match authorizer.authorize() {
        Ok(_) => Ok(effective(&claims)),
        Err(BiscuitError::FailedLogic(
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
        )) => Err(failure(&checks, &claims, principal)),
        Err(e) => Err(TokenError::Malformed {
            reason: e.to_string(),
        }),
    }
}

/// A token whose signature and form were checked: its blocks' constraints, ready to be matched
/// against principals without running Datalog again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    claims: Vec<Claims>,
}

impl Authenticated {
    /// What the token's blocks add up to.
    pub fn constraints(&self) -> Constraints {
        effective(&self.claims)
    }

    /// Whether the token speaks for a principal of `app` (when given) and CA `ca` (when given)
    /// at `now`. A part left `None` is not checked: reads name an app but no CA. Decides exactly
    /// as [`verify`] does for a full principal, since [`Verifier::authenticate`] only accepts
    /// tokens whose checks are the ones their summaries state.
    pub fn admits(
        &self,
        app: Option<&AppName>,
        ca: Option<&CaName>,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        let now_secs = epoch_secs(now);
        if let Some(expiry) = self.claims.iter().filter_map(|c| c.expiry).min()
            && now_secs >= expiry
        {
            return Err(TokenError::Expired {
                expired_at: from_epoch_secs(expiry),
            });
        }
        for kind in ConstraintKind::NAMES {
            let actual = match kind {
                ConstraintKind::AppPublisher => app.map(AppName::publisher),
                ConstraintKind::AppLocal => app.map(AppName::app),
                ConstraintKind::CaOwner => ca.map(CaName::owner),
                _ => ca.map(CaName::local),
            };
            let Some(actual) = actual else { continue };
            if let Some(required) = self
                .claims
                .iter()
                .find_map(|c| c.name(kind).filter(|v| *v != actual))
            {
                return Err(TokenError::ConstraintMismatch {
                    which: kind,
                    required: required.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Checks tokens against a root public key, remembering the ones it has seen: the signature
/// check (about 150 µs) runs once per distinct token, then [`Authenticated::admits`] decides
/// each request in well under a microsecond. Expiry is checked at every use.
#[derive(Debug)]
pub struct Verifier {
    root: RootPublicKey,
    seen: std::sync::Mutex<HashMap<Vec<u8>, std::sync::Arc<Authenticated>>>,
}

impl Verifier {
    /// Distinct tokens remembered; when full, the memory starts over.
    pub const CAPACITY: usize = 10_000;

    /// A verifier for tokens issued under `root`.
    pub fn new(root: RootPublicKey) -> Self {
        Self {
            root,
            seen: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The root public key.
    pub fn root(&self) -> &RootPublicKey {
        &self.root
    }

    /// Checks the token's signature chain and form (once per distinct token).
    pub fn authenticate(&self, token: &Token) -> Result<std::sync::Arc<Authenticated>, TokenError> {
        if let Ok(seen) = self.seen.lock()
            && let Some(found) = seen.get(token.as_bytes())
        {
            return Ok(found.clone());
        }
        let (_, claims) = open(&self.root, token)?;
        let found = std::sync::Arc::new(Authenticated { claims });
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= Self::CAPACITY {
                seen.clear();
            }
            seen.insert(token.as_bytes().to_vec(), found.clone());
        }
        Ok(found)
    }
}

/// The error for failed checks: expiry first (an expired token is worthless to anyone), then
/// the first name constraint that failed.
fn failure(checks: &[FailedCheck], claims: &[Claims], principal: &Principal) -> TokenError {
    let failed: Vec<&str> = checks
        .iter()
        .filter_map(|c| match c {
            FailedCheck::Block(b) => b.rule.strip_prefix("check if "),
            FailedCheck::Authorizer(a) => a.rule.strip_prefix("check if "),
        })
        .collect();
    let failed_kind = |kind: ConstraintKind| {
        failed
            .iter()
            .any(|rule| rule.split('(').next() == Some(kind.fact()))
    };
    if failed_kind(ConstraintKind::Expiry) {
        let expiry = claims.iter().filter_map(|c| c.expiry).min().unwrap_or(0);
        return TokenError::Expired {
            expired_at: from_epoch_secs(expiry),
        };
    }
    for kind in ConstraintKind::NAMES {
        if failed_kind(kind) {
            let actual = match kind {
                ConstraintKind::AppPublisher => principal.app.publisher(),
                ConstraintKind::AppLocal => principal.app.app(),
                ConstraintKind::CaOwner => principal.ca.owner(),
                _ => principal.ca.local(),
            };
            let required = claims
                .iter()
                .find_map(|c| c.name(kind).filter(|v| *v != actual))
                .unwrap_or_default();
            return TokenError::ConstraintMismatch {
                which: kind,
                required: required.to_string(),
                actual: actual.to_string(),
            };
        }
    }
    TokenError::Malformed {
        reason: format!("the token has checks Spine does not issue: {failed:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn principal(app: &str, ca: &str) -> Result<Principal, sharing_map::NameError> {
        Ok(Principal {
            app: AppName::parse(app)?,
            ca: CaName::parse(ca)?,
        })
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_reported() -> TestResult {
        let root = RootKey::generate();
        let again = RootKey::from_private_hex(&root.to_private_hex())?;
        assert_eq!(again.public(), root.public());
        assert_eq!(
            RootPublicKey::from_hex(&root.public().to_hex())?,
            root.public()
        );
        assert!(matches!(
            RootKey::from_private_hex("zz"),
            Err(TokenError::BadKey { .. })
        ));
        assert!(!format!("{root:?}").contains(&root.to_private_hex()));
        Ok(())
    }

    #[test]
    fn each_constraint_is_enforced() -> TestResult {
        let root = RootKey::generate();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ok = principal("acme-shop", "alice-phone")?;
        let cases = [
            (
                Constraints::any().app_publisher("acme"),
                principal("bigco-shop", "alice-phone")?,
                ConstraintKind::AppPublisher,
            ),
            (
                Constraints::any().app_local("shop"),
                principal("acme-blog", "alice-phone")?,
                ConstraintKind::AppLocal,
            ),
            (
                Constraints::any().ca_owner("alice"),
                principal("acme-shop", "bob-phone")?,
                ConstraintKind::CaOwner,
            ),
            (
                Constraints::any().ca_local("phone"),
                principal("acme-shop", "alice-tv")?,
                ConstraintKind::CaLocal,
            ),
        ];
        for (constraints, wrong, which) in cases {
            let token = issue(&root, &constraints)?;
            assert_eq!(verify(&root.public(), &token, &ok, now)?, constraints);
            match verify(&root.public(), &token, &wrong, now) {
                Err(TokenError::ConstraintMismatch { which: w, .. }) => assert_eq!(w, which),
                other => panic!("{which}: {other:?}"),
            }
        }
        let unconstrained = issue(&root, &Constraints::any())?;
        assert_eq!(
            verify(&root.public(), &unconstrained, &ok, now)?,
            Constraints::any()
        );
        Ok(())
    }

    #[test]
    fn expiry_is_exclusive_at_second_resolution() -> TestResult {
        let root = RootKey::generate();
        let expiry = UNIX_EPOCH + Duration::from_secs(2_000_000);
        let token = issue(
            &root,
            &Constraints::any().expires_at(expiry + Duration::from_millis(900)),
        )?;
        let p = principal("acme-shop", "alice-phone")?;
        let before = expiry - Duration::from_millis(1);
        assert_eq!(
            verify(&root.public(), &token, &p, before)?.expiry,
            Some(expiry)
        );
        assert_eq!(
            verify(&root.public(), &token, &p, expiry),
            Err(TokenError::Expired { expired_at: expiry })
        );
        Ok(())
    }

    #[test]
    fn invalid_constraint_values_are_refused() {
        let root = RootKey::generate();
        for (c, which) in [
            (Constraints::any().ca_owner("al"), ConstraintKind::CaOwner),
            (
                Constraints::any().ca_local("Phone"),
                ConstraintKind::CaLocal,
            ),
            (Constraints::any().app_local(""), ConstraintKind::AppLocal),
        ] {
            match issue(&root, &c) {
                Err(TokenError::InvalidConstraint { which: w, .. }) => assert_eq!(w, which),
                other => panic!("{c:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn appended_blocks_cannot_widen_even_without_attenuate() -> TestResult {
        let root = RootKey::generate();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let token = issue(&root, &Constraints::any().ca_owner("alice"))?;
        let biscuit = Biscuit::from(token.as_bytes(), root.public().0)?;
        // A hand-made block that states the fact the authority check wants and claims to be
        // unconstrained: the authority block's check does not see it.
        let block = BlockBuilder::new()
            .code("ca_owner(\"alice\"); ca_owner(\"bob\");")?
            .context("{}".to_string());
        let forged = Token(biscuit.append(block)?.to_vec()?);
        assert!(matches!(
            verify(
                &root.public(),
                &forged,
                &principal("acme-shop", "bob-phone")?,
                now
            ),
            Err(TokenError::Malformed { .. })
        ));
        // Even with a summary that matches nothing it states, the block is refused: only the
        // checks a summary describes may appear.
        let block = BlockBuilder::new()
            .code("check if ca_local(\"phone\");")?
            .context("{}".to_string());
        let hidden = Token(biscuit.append(block)?.to_vec()?);
        let verifier = Verifier::new(root.public());
        assert!(matches!(
            verifier.authenticate(&hidden),
            Err(TokenError::Malformed { .. })
        ));
        // A block without our summary is not a token Spine issued.
        let bare = Token(biscuit.append(BlockBuilder::new())?.to_vec()?);
        assert!(matches!(
            verify(
                &root.public(),
                &bare,
                &principal("acme-shop", "alice-phone")?,
                now
            ),
            Err(TokenError::Malformed { .. })
        ));
        Ok(())
    }

    #[test]
    fn another_root_key_is_a_bad_signature() -> TestResult {
        let token = issue(&RootKey::generate(), &Constraints::any())?;
        let p = principal("acme-shop", "alice-phone")?;
        assert_eq!(
            verify(&RootKey::generate().public(), &token, &p, SystemTime::now()),
            Err(TokenError::Tampered)
        );
        assert!(matches!(
            verify(
                &RootKey::generate().public(),
                &Token::from_bytes(b"nope".to_vec()),
                &p,
                SystemTime::now()
            ),
            Err(TokenError::Malformed { .. })
        ));
        Ok(())
    }

    #[test]
    fn base64_round_trips() -> TestResult {
        let token = issue(&RootKey::generate(), &Constraints::any().ca_owner("alice"))?;
        assert_eq!(Token::from_base64(&token.to_base64())?, token);
        assert!(matches!(
            Token::from_base64("not base64!"),
            Err(TokenError::Malformed { .. })
        ));
        Ok(())
    }

    #[test]
    fn cached_verifier_decides_like_datalog() -> TestResult {
        let root = RootKey::generate();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let alice = issue(&root, &Constraints::any().ca_owner("alice"))?;
        let tokens = [
            issue(&root, &Constraints::any())?,
            alice.clone(),
            attenuate(
                &root.public(),
                &alice,
                &Constraints::any().ca_local("phone"),
            )?,
            issue(
                &root,
                &Constraints::any()
                    .app_publisher("acme")
                    .expires_at(now + Duration::from_secs(5)),
            )?,
            issue(
                &root,
                &Constraints::any().expires_at(now - Duration::from_secs(1)),
            )?,
            issue(
                &root,
                &Constraints::any().app(&AppName::parse("acme-shop")?),
            )?,
        ];
        let principals = [
            principal("acme-shop", "alice-phone")?,
            principal("acme-shop", "alice-tablet")?,
            principal("acme-mail", "bob-phone")?,
            principal("other-shop", "alice-phone")?,
        ];
        let verifier = Verifier::new(root.public());
        for (i, token) in tokens.iter().enumerate() {
            for p in &principals {
                let datalog = verify(&root.public(), token, p, now).map(|_| ());
                let cached = verifier
                    .authenticate(token)?
                    .admits(Some(&p.app), Some(&p.ca), now);
                assert_eq!(
                    datalog.is_ok(),
                    cached.is_ok(),
                    "token {i}, {p:?}: {datalog:?} vs {cached:?}"
                );
                if let (Err(a), Err(b)) = (&datalog, &cached) {
                    assert_eq!(
                        std::mem::discriminant(a),
                        std::mem::discriminant(b),
                        "token {i}, {p:?}"
                    );
                }
            }
        }
        // Tampering is caught on first sight; a cached token stays good only while unexpired.
        let mut flipped = tokens[1].as_bytes().to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        assert!(verifier.authenticate(&Token::from_bytes(flipped)).is_err());
        let later = now + Duration::from_secs(10);
        assert!(matches!(
            verifier.authenticate(&tokens[3])?.admits(None, None, later),
            Err(TokenError::Expired { .. })
        ));
        Ok(())
    }
}
