//! Revisions: the logical clock of the key-value store.
//!
//! Every write transaction that changes something gets the next *main* revision (the store starts at
//! 1, so the first write is revision 2, exactly as in etcd). Inside one transaction each change gets
//! its own *sub* revision, 0, 1, 2, … in the order the operations ran. The pair orders every change
//! ever made, and it is the key under which the change is stored:
//!
//! ```text
//!  byte  0        1 ………… 8       9 ………… 16
//!       +------+--------------+--------------+
//!       | 'r'  |  main (BE)   |   sub (BE)   |
//!       +------+--------------+--------------+
//! ```
//!
//! Big-endian integers make the byte order of stored keys the order of revisions, so a scan of the
//! `r` prefix replays history in order (used to rebuild the index on start, by compaction, and by
//! watchers catching up).

/// A main revision as seen by clients: etcd's `int64` revision.
pub type Rev = i64;

/// The prefix of every history record in the state tree.
pub const HISTORY_PREFIX: u8 = b'r';

/// Length of an encoded revision key.
pub const REVISION_KEY_LEN: usize = 17;

/// One change's place in history: the transaction's main revision and the change's position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The revision of the write transaction this change belongs to.
    pub main: Rev,
    /// The position of the change inside its transaction.
    pub sub: i64,
}

impl Revision {
    pub fn new(main: Rev, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The storage key of this revision (see the module doc for the layout).
    pub fn to_key(self) -> [u8; REVISION_KEY_LEN] {
        let mut key = [0u8; REVISION_KEY_LEN];
        key[0] = HISTORY_PREFIX;
        key[1..9].copy_from_slice(&(self.main as u64).to_be_bytes());
        key[9..17].copy_from_slice(&(self.sub as u64).to_be_bytes());
        key
    }

    /// Decodes a storage key; `None` if it is not a revision key.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        if key.len() != REVISION_KEY_LEN || key[0] != HISTORY_PREFIX {
            return None;
        }
        let main = u64::from_be_bytes(key[1..9].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(key[9..17].try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_revisions() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(2, 0),
            Revision::new(2, 1),
            Revision::new(255, 0),
            Revision::new(256, 0),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_key() < pair[1].to_key(), "{pair:?}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let rev = Revision::new(1 << 40, 7);
        assert_eq!(Revision::from_key(&rev.to_key()), Some(rev));
        assert_eq!(Revision::from_key(b"m/applied"), None);
    }
}
