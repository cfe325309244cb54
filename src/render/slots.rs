//! Blocks in the endpoint maps.
//!
//! Owns: which map (shard) and which block of [`PICK_SPACE`] keys each endpoint list (a
//! service port's Cluster or Local list) occupies. A list keeps its block for as long as
//! it exists, whatever its number of endpoints: the list's DNAT rule
//! (`numgen random mod 65536 offset BLOCK map @endpoints-SHARD`) never changes, and an
//! endpoint change only replaces the list's ranges inside its block (elements only).
//! Freed blocks are reused.
//!
//! Why shards: the kernel checks every element added to a data map against every rule that
//! references the map (and every rule binding a map from a new chain walks all its
//! elements), so one map referenced by every service chain costs elements × rules. A shard
//! is referenced by at most [`SHARD_OWNERS`] rules, which makes the cost linear in the
//! number of endpoints. 32 lists per map (docs/measurements/interval-maps.md): fewer cost
//! more in the kernel's linear scan of set names (every rule finds its map by name), more
//! cost more in the checks of each added element against every rule bound to the map; 64
//! is ~4% faster at 50k services and ~5% slower at 10k. Affinity lists have their own
//! shards ([`super::affinity::AFFINITY_SHARD_OWNERS`]).
//!
//! Must not: depend on iteration order of anything but its input. A fresh allocator fed
//! lists in sorted order gives the same numbers every time (render is deterministic).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::affinity::{AffinityAllocator, AffinityList};
use super::names::{chain_base, ENDPOINTS_PREFIX, PREFIX_CLUSTER, PREFIX_LOCAL};
use crate::model::{EndpointAddr, ServicePortName};
use crate::nft::{Stmt, Table, PICK_SPACE};

/// Which endpoint list of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    Cluster,
    Local,
}

/// The owner of a block: a service port's endpoint list (the name shared, not copied:
/// the allocator lives as long as the renderer, one entry per list).
pub type Owner = (Arc<ServicePortName>, Policy);

/// The chain holding `owner`'s DNAT rule.
pub fn chain_name(owner: &Owner) -> String {
    let prefix = match owner.1 {
        Policy::Cluster => PREFIX_CLUSTER,
        Policy::Local => PREFIX_LOCAL,
    };
    format!("{prefix}{}", chain_base(&owner.0))
}

/// Endpoint lists (= rules referencing the map) per shard.
pub const SHARD_OWNERS: u32 = 32;

/// One list's block: keys `base ..= base + 65535` of shard `shard`'s map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub shard: u32,
    pub base: u32,
}

/// One endpoint map's blocks: the indexes in use are `0 .. SHARD_OWNERS`.
#[derive(Clone, Debug, Default)]
struct Shard {
    used: BTreeSet<u32>,
}

/// Where [`crate::render::fragment`] gets its blocks: the allocator itself (which hands out
/// new blocks), or [`Existing`] (which only looks them up, for re-rendering a fragment
/// rendered before).
pub trait Ranges {
    fn range(&mut self, owner: &Owner) -> Range;
    /// The place of an affinity list (its own shards, constant and endpoint ids: see
    /// [`super::affinity`]).
    fn affinity(&mut self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList;
}

impl Ranges for SlotAllocator {
    fn range(&mut self, owner: &Owner) -> Range {
        SlotAllocator::range(self, owner)
    }
    fn affinity(&mut self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList {
        // A list that had a block in the endpoint maps (affinity switched on) frees it.
        if let Some(r) = self.owned.remove(owner) {
            self.release(r);
        }
        self.affinity.get_or_insert_default().list(owner, eps)
    }
}

/// Read-only blocks: the one each owner holds. An owner without a block (its list was
/// released since) gets a placeholder: callers that re-render for the table-wide elements
/// only never look at blocks.
pub struct Existing<'a>(pub &'a SlotAllocator);

impl Ranges for Existing<'_> {
    fn range(&mut self, owner: &Owner) -> Range {
        self.0
            .owned
            .get(owner)
            .copied()
            .unwrap_or(Range { shard: 0, base: 0 })
    }
    fn affinity(&mut self, owner: &Owner, eps: &[EndpointAddr]) -> AffinityList {
        match &self.0.affinity {
            Some(a) => a.existing(owner, eps),
            None => AffinityAllocator::default().existing(owner, eps),
        }
    }
}

/// Hands out blocks and remembers them between renders.
#[derive(Clone, Debug, Default)]
pub struct SlotAllocator {
    shards: Vec<Shard>,
    owned: HashMap<Owner, Range>,
    /// Owners seen since the last [`SlotAllocator::sweep`].
    seen: HashSet<Owner>,
    /// Shards with a free block, lowest first.
    open: BTreeSet<u32>,
    /// Blocks found in the kernel ([`SlotAllocator::adopt`]), by the chain name of the
    /// list that held them, reserved until that list asks or the next sweep.
    reserved: HashMap<String, Range>,
    /// The affinity lists (a separate instance for their own shards), once there is one.
    affinity: Option<Box<AffinityAllocator>>,
    /// Lists per shard when not [`SHARD_OWNERS`] ([`SlotAllocator::with_shard_owners`]).
    per_shard: Option<u32>,
}

impl SlotAllocator {
    pub fn new() -> SlotAllocator {
        SlotAllocator::default()
    }

    /// An allocator whose shards hold `n` lists each (the affinity maps' shards).
    pub fn with_shard_owners(n: u32) -> SlotAllocator {
        SlotAllocator {
            per_shard: Some(n.max(1)),
            ..SlotAllocator::default()
        }
    }

    /// Lists per shard.
    fn cap(&self) -> u32 {
        self.per_shard.unwrap_or(SHARD_OWNERS)
    }

    /// The block of `owner`: the one it holds, else the one adopted for its chain, else
    /// the lowest free block of the first shard with room.
    pub fn range(&mut self, owner: &Owner) -> Range {
        let cap = self.cap();
        self.seen.insert(owner.clone());
        if let Some(r) = self.owned.get(owner) {
            return *r;
        }
        // A list that had an affinity place (affinity switched off) frees it.
        if let Some(a) = self.affinity.as_mut().filter(|a| a.holds(owner)) {
            a.release_owner(owner);
        }
        if !self.reserved.is_empty() {
            if let Some(r) = self.reserved.remove(&chain_name(owner)) {
                self.owned.insert(owner.clone(), r);
                return r;
            }
        }
        let shard = match self.open.first() {
            Some(s) => *s,
            None => {
                self.shards.push(Shard::default());
                let s = self.shards.len() as u32 - 1;
                self.open.insert(s);
                s
            }
        };
        let sh = &mut self.shards[shard as usize];
        let index = (0..cap)
            .find(|i| !sh.used.contains(i))
            .expect("an open shard has a free block");
        sh.used.insert(index);
        if sh.used.len() as u32 == cap {
            self.open.remove(&shard);
        }
        let r = Range {
            shard,
            base: index * PICK_SPACE,
        };
        self.owned.insert(owner.clone(), r);
        r
    }

    /// Takes over blocks a previous kproxy left in the kernel: `(chain, block)` of each
    /// list's DNAT rule. Each block is reserved for the list of that chain, which gets it
    /// back when it is rendered, so a restart rewrites no rule and moves no element of a
    /// list that did not change. Blocks no list claims are freed at the next
    /// [`SlotAllocator::sweep`]; a block that is out of range or taken is ignored (its
    /// list gets a new one).
    pub fn adopt(&mut self, blocks: impl IntoIterator<Item = (String, Range)>) {
        for (chain, r) in blocks {
            self.reserve(chain, r);
        }
    }

    /// Reserves block `r` for the list whose rules are in `chain` (one block of
    /// [`SlotAllocator::adopt`]); false when `r` is out of range or taken, or `chain`
    /// already holds a reservation.
    pub fn reserve(&mut self, chain: String, r: Range) -> bool {
        let cap = self.cap();
        let index = r.base / PICK_SPACE;
        if !r.base.is_multiple_of(PICK_SPACE) || index >= cap || r.shard > 1 << 20 {
            return false;
        }
        while self.shards.len() <= r.shard as usize {
            self.open.insert(self.shards.len() as u32);
            self.shards.push(Shard::default());
        }
        let sh = &mut self.shards[r.shard as usize];
        if self.reserved.contains_key(&chain) || !sh.used.insert(index) {
            return false;
        }
        if sh.used.len() as u32 == cap {
            self.open.remove(&r.shard);
        }
        self.reserved.insert(chain, r);
        true
    }

    /// Takes over the endpoint lists of `t` (kproxy's table of this family as a previous
    /// process left it): each plain list's block, from its chain's one DNAT rule, and the
    /// affinity lists ([`SlotAllocator::adopt_affinity`]).
    pub fn adopt_table(&mut self, t: &Table) {
        let blocks = t.chains.values().filter_map(|c| match c.rules.as_slice() {
            [r] => match r.stmts.as_slice() {
                [Stmt::DnatPick { offset, map, .. }] => {
                    let shard = map.strip_prefix(ENDPOINTS_PREFIX)?.parse().ok()?;
                    let base = *offset;
                    Some((c.name.clone(), Range { shard, base }))
                }
                _ => None,
            },
            _ => None,
        });
        self.adopt(blocks);
        self.adopt_affinity(t);
    }

    /// Adopts the affinity lists of a table the kernel holds (see
    /// [`AffinityAllocator::adopt`]).
    pub fn adopt_affinity(&mut self, t: &Table) {
        self.affinity.get_or_insert_default().adopt(t);
    }

    /// Shards that hold at least one block (their maps must exist), ascending.
    pub fn shards_in_use(&self) -> Vec<u32> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.used.is_empty())
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// The block `owner` holds, if any.
    pub fn block_of(&self, owner: &Owner) -> Option<Range> {
        self.owned.get(owner).copied()
    }

    /// Frees the block of `owner`, if it holds one (incremental updates: a list that
    /// disappeared, or a service port that was deleted).
    pub fn release_owner(&mut self, owner: &Owner) {
        if let Some(r) = self.owned.remove(owner) {
            self.release(r);
        }
        self.seen.remove(owner);
        if let Some(a) = &mut self.affinity {
            a.release_owner(owner);
        }
    }

    /// Affinity shards that hold at least one list (their maps must exist), ascending.
    pub fn affinity_shards_in_use(&self) -> Vec<u32> {
        self.affinity
            .as_ref()
            .map(|a| a.shards_in_use())
            .unwrap_or_default()
    }

    /// Frees the blocks of owners not asked for since the previous sweep.
    pub fn sweep(&mut self) {
        let stale: Vec<Owner> = self
            .owned
            .keys()
            .filter(|o| !self.seen.contains(*o))
            .cloned()
            .collect();
        for o in stale {
            if let Some(r) = self.owned.remove(&o) {
                self.release(r);
            }
        }
        for (_, r) in std::mem::take(&mut self.reserved) {
            self.release(r);
        }
        self.seen.clear();
        if let Some(a) = &mut self.affinity {
            a.sweep();
        }
    }

    fn release(&mut self, r: Range) {
        self.shards[r.shard as usize]
            .used
            .remove(&(r.base / PICK_SPACE));
        self.open.insert(r.shard);
    }

    /// How many blocks are held.
    pub fn len(&self) -> usize {
        self.owned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::Protocol;

    fn owner(name: &str) -> Owner {
        (
            Arc::new(ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: "p".into(),
                protocol: Protocol::Tcp,
            }),
            Policy::Cluster,
        )
    }

    #[test]
    fn blocks_are_disjoint_and_stable() {
        let mut a = SlotAllocator::new();
        let r1 = a.range(&owner("a"));
        let r2 = a.range(&owner("b"));
        assert_eq!(r1, Range { shard: 0, base: 0 });
        assert_eq!(
            r2,
            Range {
                shard: 0,
                base: PICK_SPACE
            }
        );
        a.sweep();
        assert_eq!(a.range(&owner("a")), r1);
        assert_eq!(a.range(&owner("b")), r2);
    }

    #[test]
    fn shards_hold_at_most_shard_owners_lists() {
        let mut a = SlotAllocator::new();
        let n = SHARD_OWNERS as usize;
        let ranges: Vec<Range> = (0..n * 2 + 1)
            .map(|i| a.range(&owner(&format!("s{i}"))))
            .collect();
        assert!(ranges[..n].iter().all(|r| r.shard == 0));
        assert!(ranges[n..n * 2].iter().all(|r| r.shard == 1));
        assert_eq!(ranges[n * 2].shard, 2);
        assert_eq!(a.shards_in_use(), vec![0, 1, 2]);
        // A freed place in shard 0 is taken by the next new list, at the freed block.
        a.release_owner(&owner("s5"));
        assert_eq!(a.range(&owner("new")), ranges[5]);
        // A shard whose lists all go away is no longer in use.
        a.release_owner(&owner(&format!("s{}", n * 2)));
        assert_eq!(a.shards_in_use(), vec![0, 1]);
    }

    #[test]
    fn adopted_blocks_go_back_to_their_lists() {
        let mut a = SlotAllocator::new();
        let r = |shard, i| Range {
            shard,
            base: i * PICK_SPACE,
        };
        a.adopt([
            (chain_name(&owner("b")), r(1, 7)),
            (chain_name(&owner("gone")), r(0, 0)),
            (chain_name(&owner("dup")), r(1, 7)), // taken: ignored
            (chain_name(&owner("bad")), Range { shard: 0, base: 5 }),
        ]);
        // A new list does not get a reserved block; "b" gets its own back.
        assert_eq!(a.range(&owner("a")), r(0, 1));
        assert_eq!(a.range(&owner("b")), r(1, 7));
        assert_eq!(a.range(&owner("dup")), r(0, 2));
        assert_eq!(a.range(&owner("bad")), r(0, 3));
        // Unclaimed reservations are freed by the sweep.
        a.sweep();
        assert_eq!(a.range(&owner("c")), r(0, 0));
        assert_eq!(a.shards_in_use(), vec![0, 1]);
    }

    #[test]
    fn freed_blocks_are_reused() {
        let mut a = SlotAllocator::new();
        a.range(&owner("a"));
        a.range(&owner("b"));
        a.sweep();
        a.range(&owner("b"));
        a.sweep(); // "a" is gone
        let c = a.range(&owner("c"));
        assert_eq!(c.base, 0);
        assert_eq!(a.len(), 2);
    }
}
