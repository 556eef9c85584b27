//! What a subscription stream follows: one map, or every map whose name starts with a prefix, in
//! one app. The client keeps these to resume a stream; the server keeps them to decide what each
//! stream is sent. Both decide whether a subscription covers a map with
//! [`SubscriptionSpec::covers`].

use sharing_map::{AppName, MapKey, MapName};
use spine_proto::v1 as pb;

use crate::convert::ConvertError;

/// What to subscribe to: one map, or every map whose name starts with a prefix, in one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The app the maps live in.
    pub app: AppName,
    /// A map's exact name, or a name prefix.
    pub map: String,
    /// Whether `map` is a prefix.
    pub prefix: bool,
    /// Deliver the deltas after this version (the caller has it); without it, a snapshot of the
    /// current version comes first.
    pub from_version: Option<u64>,
}

impl SubscriptionSpec {
    /// One map, starting with a snapshot of its current version.
    pub fn map(app: AppName, map: &MapName) -> Self {
        SubscriptionSpec {
            app,
            map: map.to_string(),
            prefix: false,
            from_version: None,
        }
    }

    /// Every map whose name starts with `prefix`, each starting with a snapshot.
    pub fn prefix(app: AppName, prefix: impl Into<String>) -> Self {
        SubscriptionSpec {
            app,
            map: prefix.into(),
            prefix: true,
            from_version: None,
        }
    }

    /// Starts after `version` instead of with a snapshot.
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = Some(version);
        self
    }

    /// Whether `other` follows the same maps (same app, name or prefix, and kind), whatever
    /// version either starts from.
    pub fn same_target(&self, other: &SubscriptionSpec) -> bool {
        self.app == other.app && self.map == other.map && self.prefix == other.prefix
    }

    /// Whether this subscription follows `key`: its one map, or any map of its app whose name
    /// starts with its prefix.
    pub fn covers(&self, key: &MapKey) -> bool {
        self.app == key.app
            && if self.prefix {
                key.map.as_str().starts_with(&self.map)
            } else {
                key.map.as_str() == self.map
            }
    }

    /// A subscription from the wire: the app must be a valid name, and so must the map unless it
    /// is a prefix.
    pub fn from_pb(s: pb::Subscription) -> Result<Self, ConvertError> {
        let app = AppName::parse(&s.app)?;
        if !s.prefix {
            MapName::parse(&s.map)?;
        }
        Ok(SubscriptionSpec {
            app,
            map: s.map,
            prefix: s.prefix,
            from_version: s.from_version,
        })
    }

    /// This subscription on the wire.
    pub fn to_pb(&self) -> pb::Subscription {
        pb::Subscription {
            app: self.app.to_string(),
            map: self.map.clone(),
            prefix: self.prefix,
            from_version: self.from_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str, map: &str) -> Result<MapKey, sharing_map::NameError> {
        Ok(MapKey::new(AppName::parse(app)?, MapName::parse(map)?))
    }

    #[test]
    fn exact_and_prefix_subscriptions_cover_their_maps_only() -> Result<(), ConvertError> {
        let app = AppName::parse("acme-shop")?;
        let exact = SubscriptionSpec::map(app.clone(), &MapName::parse("bob-tv-x")?);
        assert!(exact.covers(&key("acme-shop", "bob-tv-x")?));
        assert!(!exact.covers(&key("acme-shop", "bob-tv-xy")?));
        assert!(!exact.covers(&key("acme-other", "bob-tv-x")?));
        let prefix = SubscriptionSpec::prefix(app.clone(), "bob-tv");
        assert!(prefix.covers(&key("acme-shop", "bob-tv-x")?));
        assert!(prefix.covers(&key("acme-shop", "bob-tvs-y")?));
        assert!(!prefix.covers(&key("acme-shop", "bob-radio-x")?));
        assert!(!prefix.covers(&key("acme-other", "bob-tv-x")?));
        assert!(SubscriptionSpec::prefix(app.clone(), "").covers(&key("acme-shop", "ann-a-b")?));
        assert!(exact.same_target(&exact.clone().from_version(3)));
        assert!(!exact.same_target(&SubscriptionSpec::prefix(app, "bob-tv-x")));
        Ok(())
    }

    #[test]
    fn subscriptions_round_trip_and_bad_names_are_refused() -> Result<(), ConvertError> {
        let spec = SubscriptionSpec::prefix(AppName::parse("acme-shop")?, "bob-").from_version(4);
        assert_eq!(SubscriptionSpec::from_pb(spec.to_pb())?, spec);
        let bad_map = pb::Subscription {
            app: "acme-shop".into(),
            map: "bob".into(),
            prefix: false,
            from_version: None,
        };
        assert!(matches!(
            SubscriptionSpec::from_pb(bad_map.clone()),
            Err(ConvertError::Name(_))
        ));
        // As a prefix the same text is fine.
        let as_prefix = pb::Subscription {
            prefix: true,
            ..bad_map
        };
        assert!(SubscriptionSpec::from_pb(as_prefix).is_ok());
        let bad_app = pb::Subscription {
            app: "Acme".into(),
            map: "bob-tv-x".into(),
            prefix: false,
            from_version: None,
        };
        assert!(SubscriptionSpec::from_pb(bad_app).is_err());
        Ok(())
    }
}
