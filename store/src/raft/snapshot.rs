//! Snapshots: the whole replicated state as of one applied index, in one self-checking blob.
//!
//! Every part of the replicated state lives in the `state` sled tree (history records, clocks,
//! the applied index, leases, published members, the conf state), and only the node loop writes
//! it. So a snapshot is a copy of that tree taken by the loop right after it wrote its applied
//! changes back ([`encode`]): nothing can change underneath the copy, and the copy's own
//! `m/applied` record says which index it covers.
//!
//! Format (all lengths u32 big-endian):
//!
//! ```text
//!   "CNCDSNP1" (key length, key, value length, value)* CRC-32 of everything before it
//! ```
//!
//! [`decode`] checks the magic, every length and the checksum, and returns an error — never
//! panics — on anything else: snapshot data comes from a peer, and a receiver checks it
//! (`transport.rs`) before raft-rs ever sees it.
//!
//! How a snapshot travels and is installed: the leader makes one when raft-rs asks its storage
//! for it (`storage.rs`: the first request answers "temporarily unavailable" and the loop makes
//! one at the end of its turn); raft-rs puts it in a `MsgSnapshot`, which the transport streams
//! in chunks (`Peer/Snapshot`); the follower's loop installs it (`node.rs`): state, applied index
//! and conf state in one atomic sled batch (`KvStore::restore`), then the log is reset to start
//! after it.
//!
//! Left out: incremental snapshots and streaming the copy straight from sled; a snapshot is held
//! whole in memory while it is made, sent and installed, which suits stores of a few hundred MiB.

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"CNCDSNP1";

/// Keys of the state tree that are one member's own, never copied to another (an identity record
/// left there by an earlier version; `server.rs` moves it out on start).
const LOCAL_KEYS: [&[u8]; 1] = [b"m/identity"];

/// Copies every replicated record of `tree` into a snapshot blob.
pub fn encode(tree: &sled::Tree) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    for item in tree.iter() {
        let (key, value) = item?;
        if LOCAL_KEYS.contains(&&key[..]) {
            continue;
        }
        push_field(&mut out, &key)?;
        push_field(&mut out, &value)?;
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| Error::Corrupt("a record over 4 GiB cannot be snapshotted".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The records of a snapshot blob, in key order, after checking it whole.
pub fn decode(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |what: &str| Error::Corrupt(format!("bad snapshot: {what}"));
    let (body, crc) = data
        .split_last_chunk::<4>()
        .ok_or_else(|| bad("too short"))?;
    if !body.starts_with(MAGIC) {
        return Err(bad("not a Concord snapshot"));
    }
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return Err(bad("checksum mismatch"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        let key = take_field(&mut rest)?;
        let value = take_field(&mut rest)?;
        records.push((key, value));
    }
    let sorted = records.windows(2).all(|w| w[0].0 < w[1].0);
    if !sorted {
        return Err(bad("records out of order"));
    }
    Ok(records)
}

/// Takes one length-prefixed field off the front of `rest`.
fn take_field(rest: &mut &[u8]) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::Corrupt(format!("bad snapshot: {what}"));
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("truncated length"))?;
    let len = u32::from_be_bytes(*len) as usize;
    let (bytes, tail) = tail
        .split_at_checked(len)
        .ok_or_else(|| bad("truncated field"))?;
    *rest = tail;
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(records: &[(&str, &str)]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        for (k, v) in records {
            tree.insert(k, *v).unwrap();
        }
        tree
    }

    #[test]
    fn a_tree_round_trips_in_key_order_without_local_records() {
        let tree = tree_with(&[
            ("m/applied", "12345678"),
            ("h/1", ""),
            ("h/2", "v"),
            ("m/identity", "this member's own"),
        ]);
        let records = decode(&encode(&tree).unwrap()).unwrap();
        let keys: Vec<&[u8]> = records.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"h/1"[..], b"h/2", b"m/applied"]);
        assert_eq!(records[1].1, b"v");
    }

    /// Every damaged blob is an error, never a panic: a truncation anywhere, a flipped bit
    /// anywhere, an empty blob.
    #[test]
    fn damaged_blobs_are_refused() {
        let blob = encode(&tree_with(&[("a", "1"), ("b", "22")])).unwrap();
        for cut in 0..blob.len() {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..blob.len() {
            let mut flipped = blob.clone();
            flipped[i] ^= 0x10;
            assert!(decode(&flipped).is_err(), "bit flipped in byte {i}");
        }
    }

    /// A blob with a valid checksum but lying lengths (made by hand) is refused too.
    #[test]
    fn a_checksummed_blob_with_bad_lengths_is_refused() {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&100u32.to_be_bytes());
        blob.extend_from_slice(b"short");
        let crc = crc32fast::hash(&blob);
        blob.extend_from_slice(&crc.to_be_bytes());
        assert!(decode(&blob).is_err());
    }
}
