//! [`Families`]: which IP families an event or a sync concerns.
//!
//! Owns: the small set type the sync loop and the cache use to say which of upstream's two
//! per-family proxiers (one per family, both present on an IPv6-capable kernel) would see
//! a change, and so which families' series a sync records.
//!
//! Must not: decide which families a change affects (the source says so) or record
//! anything.

use crate::nft::Family;

/// A set of IP families: which of upstream's two per-family proxiers an event or a sync
/// concerns. kproxy programs both tables in one transaction, but records each family's
/// series as upstream's proxier of that family would (see docs/daemon.md, "Metrics").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    pub const NONE: Families = Families {
        v4: false,
        v6: false,
    };
    pub const BOTH: Families = Families { v4: true, v6: true };

    /// Just this family.
    pub fn of(family: Family) -> Families {
        Families::NONE.with(family)
    }

    /// This set plus `family`.
    pub fn with(mut self, family: Family) -> Families {
        self.insert(family);
        self
    }

    pub fn insert(&mut self, family: Family) {
        match family {
            Family::V4 => self.v4 = true,
            Family::V6 => self.v6 = true,
        }
    }

    pub fn union(self, other: Families) -> Families {
        Families {
            v4: self.v4 || other.v4,
            v6: self.v6 || other.v6,
        }
    }

    pub fn contains(self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    pub fn is_empty(self) -> bool {
        !self.v4 && !self.v6
    }

    /// The families in the set, IPv4 first.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Family> for Families {
    fn from_iter<I: IntoIterator<Item = Family>>(iter: I) -> Families {
        iter.into_iter().fold(Families::NONE, Families::with)
    }
}
