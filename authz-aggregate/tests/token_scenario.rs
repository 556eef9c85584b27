//! The token scenario of DESIGN.md §6. "Writing map X" means verifying the token against the
//! principal that may write X: X's writer CA, in the request's app.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authz_aggregate::{
    ConstraintKind, Constraints, Principal, RootKey, Token, TokenError, attenuate, inspect, issue,
    verify,
};
use sharing_map::{AppName, CaName, MapName};

type TestResult = Result<(), Box<dyn Error>>;

struct Deployment {
    root: RootKey,
    app: AppName,
    now: SystemTime,
}

impl Deployment {
    fn new() -> Result<Self, Box<dyn Error>> {
        Ok(Self {
            root: RootKey::generate(),
            app: AppName::parse("acme-notes")?,
            now: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        })
    }

    fn write(&self, token: &Token, map: &str) -> Result<Constraints, Box<dyn Error>> {
        let writer = Principal::writer_of(&self.app, &MapName::parse(map)?);
        Ok(verify(&self.root.public(), token, &writer, self.now)?)
    }

    fn write_err(&self, token: &Token, map: &str) -> Result<TokenError, Box<dyn Error>> {
        let writer = Principal::writer_of(&self.app, &MapName::parse(map)?);
        match verify(&self.root.public(), token, &writer, self.now) {
            Ok(c) => Err(format!("writing {map} was allowed with {c:?}").into()),
            Err(e) => Ok(e),
        }
    }

    fn alice_phone_token(&self) -> Result<Token, Box<dyn Error>> {
        let constraints = Constraints::any()
            .app(&self.app)
            .ca(&CaName::parse("alice-phone")?)
            .expires_at(self.now + Duration::from_secs(86_400));
        Ok(issue(&self.root, &constraints)?)
    }
}

#[test]
fn a_token_for_alice_phone_writes_only_alice_phone_maps() -> TestResult {
    let d = Deployment::new()?;
    let token = d.alice_phone_token()?;
    let granted = d.write(&token, "alice-phone-x")?;
    assert_eq!(granted.ca_owner.as_deref(), Some("alice"));
    assert_eq!(granted.ca_local.as_deref(), Some("phone"));

    assert!(matches!(
        d.write_err(&token, "bob-phone-x")?,
        TokenError::ConstraintMismatch { which: ConstraintKind::CaOwner, ref required, ref actual }
            if required == "alice" && actual == "bob"
    ));
    assert!(matches!(
        d.write_err(&token, "alice-tablet-x")?,
        TokenError::ConstraintMismatch { which: ConstraintKind::CaLocal, ref required, ref actual }
            if required == "phone" && actual == "tablet"
    ));
    // The same CA in another app is another principal.
    let other_app = Principal {
        app: AppName::parse("acme-chat")?,
        ca: CaName::parse("alice-phone")?,
    };
    assert!(matches!(
        verify(&d.root.public(), &token, &other_app, d.now),
        Err(TokenError::ConstraintMismatch {
            which: ConstraintKind::AppLocal,
            ..
        })
    ));
    Ok(())
}

#[test]
fn an_attenuated_copy_cannot_widen_itself() -> TestResult {
    let d = Deployment::new()?;
    // A broad token for every CA of alice, narrowed offline to her phone for an hour.
    let broad = issue(
        &d.root,
        &Constraints::any()
            .ca_owner("alice")
            .expires_at(d.now + Duration::from_secs(86_400)),
    )?;
    let hour = d.now + Duration::from_secs(3_600);
    let phone = attenuate(
        &d.root.public(),
        &broad,
        &Constraints::any().ca_local("phone").expires_at(hour),
    )?;
    assert!(d.write(&broad, "alice-tablet-x").is_ok());
    assert!(matches!(
        d.write_err(&phone, "alice-tablet-x")?,
        TokenError::ConstraintMismatch {
            which: ConstraintKind::CaLocal,
            ..
        }
    ));
    let c = d.write(&phone, "alice-phone-x")?;
    assert_eq!(c.expiry, Some(hour));

    // Each way of widening the copy is refused as broader.
    let widen = [
        (Constraints::any().ca_owner("bob"), ConstraintKind::CaOwner),
        (
            Constraints::any().ca_local("tablet"),
            ConstraintKind::CaLocal,
        ),
        (
            Constraints::any().expires_at(d.now + Duration::from_secs(7_200)),
            ConstraintKind::Expiry,
        ),
    ];
    for (request, which) in widen {
        match attenuate(&d.root.public(), &phone, &request) {
            Err(TokenError::Broader { which: w, .. }) => assert_eq!(w, which),
            other => panic!("{request:?}: {other:?}"),
        }
    }
    // Restating what it has, or narrowing further, is fine.
    let same = attenuate(
        &d.root.public(),
        &phone,
        &Constraints::any().ca_owner("alice"),
    )?;
    assert_eq!(same, phone);
    let narrower = attenuate(
        &d.root.public(),
        &phone,
        &Constraints::any().app_publisher("acme"),
    )?;
    assert_eq!(
        inspect(&d.root.public(), &narrower)?,
        Constraints::any()
            .app_publisher("acme")
            .ca_owner("alice")
            .ca_local("phone")
            .expires_at(hour)
    );
    Ok(())
}

#[test]
fn an_expired_token_fails() -> TestResult {
    let d = Deployment::new()?;
    let token = d.alice_phone_token()?;
    let later = Deployment {
        now: d.now + Duration::from_secs(86_400),
        ..d
    };
    assert_eq!(
        later.write_err(&token, "alice-phone-x")?,
        TokenError::Expired {
            expired_at: later.now
        }
    );
    // Expiry is reported before the other constraints: the token is worthless to anyone.
    assert!(matches!(
        later.write_err(&token, "bob-phone-x")?,
        TokenError::Expired { .. }
    ));
    // Shortening the expiry of a valid token expires it earlier.
    let short = attenuate(
        &later.root.public(),
        &token,
        &Constraints::any().expires_at(later.now - Duration::from_secs(86_000)),
    )?;
    let at = Deployment {
        now: later.now - Duration::from_secs(86_000),
        ..later
    };
    assert!(matches!(
        at.write_err(&short, "alice-phone-x")?,
        TokenError::Expired { .. }
    ));
    assert!(at.write(&token, "alice-phone-x").is_ok());
    Ok(())
}

#[test]
fn a_token_with_one_flipped_byte_fails() -> TestResult {
    let d = Deployment::new()?;
    let token = d.alice_phone_token()?;
    let bytes = token.as_bytes();
    // Flip one bit of the signed payload: the "alice" in the authority block's symbols.
    let at = bytes
        .windows(5)
        .position(|w| w == b"alice")
        .ok_or("the token does not contain \"alice\"")?;
    let mut flipped = bytes.to_vec();
    flipped[at] ^= 0x01;
    assert_eq!(
        d.write_err(&Token::from_bytes(flipped), "alice-phone-x")?,
        TokenError::Tampered
    );
    // Wherever the flipped byte is, the token is refused: as tampered, or as not a token at all.
    let mut tampered = 0;
    for i in 0..bytes.len() {
        let mut flipped = bytes.to_vec();
        flipped[i] ^= 0x01;
        match d.write_err(&Token::from_bytes(flipped), "alice-phone-x")? {
            TokenError::Tampered => tampered += 1,
            TokenError::Malformed { .. } => {}
            other => return Err(format!("byte {i}: unexpected {other:?}").into()),
        }
    }
    assert!(tampered > bytes.len() / 2, "{tampered} of {}", bytes.len());
    Ok(())
}
