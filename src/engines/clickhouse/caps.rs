//! What a ClickHouse server can do, decided from `version()`.
//!
//! Servers in the field range from 18.x (Debian's package) to 26.x. Features are
//! switched on by the first release that has them in a usable form; a strategy that
//! needs a missing feature says which one and from which version.

use std::fmt;

/// A `major.minor.patch` server version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses `18.16.1`, `24.3.2.23`, `26.9.1.1-testing`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        let patch = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        Some(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A feature flow may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// RowBinaryWithNamesAndTypes, used by the crate's typed validation.
    TypedValidation,
    /// `EXCHANGE TABLES a AND b` (also needs an Atomic database).
    ExchangeTables,
    /// Storage policies, `system.storage_policies`, `system.parts.disk_name`.
    StoragePolicies,
    /// The `s3()` table function for reading.
    S3Function,
    /// `INSERT INTO FUNCTION s3(…)`.
    InsertIntoS3,
    /// The Parquet format.
    Parquet,
    /// `ALTER TABLE … MOVE PARTITION … TO TABLE …`.
    MovePartitionToTable,
    /// The `optimize_on_insert` setting (on by default: an INSERT into a Replacing,
    /// Collapsing, Summing… table merges its block as it writes it). It appeared around
    /// 20.12–21.1; flow sends it from 21.2 on, where it surely exists.
    OptimizeOnInsert,
    /// `ALTER TABLE … UNFREEZE PARTITION … WITH NAME` (removing a FREEZE's backup),
    /// added in 21.4 (ClickHouse pull request 21142).
    Unfreeze,
}

impl Feature {
    /// The first version flow relies on for this feature.
    pub fn since(self) -> Version {
        match self {
            Feature::TypedValidation => Version::new(24, 1, 0),
            Feature::ExchangeTables => Version::new(20, 5, 0),
            Feature::StoragePolicies => Version::new(19, 15, 0),
            Feature::S3Function => Version::new(20, 3, 0),
            Feature::InsertIntoS3 => Version::new(21, 5, 0),
            Feature::Parquet => Version::new(20, 1, 0),
            Feature::MovePartitionToTable => Version::new(20, 5, 0),
            Feature::OptimizeOnInsert => Version::new(21, 2, 0),
            Feature::Unfreeze => Version::new(21, 4, 0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::TypedValidation => "RowBinaryWithNamesAndTypes (typed validation)",
            Feature::ExchangeTables => "EXCHANGE TABLES",
            Feature::StoragePolicies => "storage policies",
            Feature::S3Function => "the s3() table function",
            Feature::InsertIntoS3 => "INSERT INTO FUNCTION s3",
            Feature::Parquet => "the Parquet format",
            Feature::MovePartitionToTable => "MOVE PARTITION … TO TABLE",
            Feature::OptimizeOnInsert => "the optimize_on_insert setting",
            Feature::Unfreeze => "ALTER TABLE … UNFREEZE",
        }
    }
}

/// Capabilities of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub version: Version,
}

impl Caps {
    pub fn from_version(text: &str) -> Option<Self> {
        Version::parse(text).map(|version| Caps { version })
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.version >= feature.since()
    }

    /// Err with a message naming the feature, the server version and the fix.
    pub fn require(&self, feature: Feature, for_what: &str) -> Result<(), String> {
        if self.has(feature) {
            Ok(())
        } else {
            Err(format!(
                "{for_what} needs {} (ClickHouse {} or later); this server is {}",
                feature.name(),
                feature.since(),
                self.version
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_gate_features() {
        let old = Caps::from_version("18.16.1").unwrap();
        let new = Caps::from_version("26.9.1.1").unwrap();
        assert_eq!(old.version, Version::new(18, 16, 1));
        for f in [
            Feature::TypedValidation,
            Feature::ExchangeTables,
            Feature::StoragePolicies,
            Feature::InsertIntoS3,
            Feature::Parquet,
        ] {
            assert!(!old.has(f), "{f:?}");
            assert!(new.has(f), "{f:?}");
        }
        let msg = old
            .require(Feature::StoragePolicies, "s3-policy")
            .unwrap_err();
        assert!(msg.contains("19.15") && msg.contains("18.16.1"), "{msg}");
        assert_eq!(
            Version::parse("24.3.2.23-lts").unwrap(),
            Version::new(24, 3, 2)
        );
    }
}
