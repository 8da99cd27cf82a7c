//! Naming and retention of the objects incremental checkpoints share.
//!
//! An Aggregate writes each window it changed as one object, named by the
//! actor, the window and the checkpoint that wrote it; later checkpoints
//! reference the object until the window changes again. Retention must
//! therefore delete an object only when no checkpoint it keeps references
//! it, and never one a checkpoint still in progress may reference.

use std::collections::BTreeSet;

/// Name of the shared object `actor` writes for the window starting at
/// `window_start` in checkpoint `epoch`. Epochs never repeat, so names do
/// not either, and a retried write cannot replace a referenced object.
pub fn object_name(actor: &str, window_start: i64, epoch: u64) -> String {
    format!("{actor}/w{window_start}.e{epoch:020}")
}

/// Name of the shared object `actor` writes in checkpoint `epoch` for its
/// uncommitted output of epoch `output_epoch`.
pub fn output_object_name(actor: &str, output_epoch: u64, epoch: u64) -> String {
    format!("{actor}/out{output_epoch}.e{epoch:020}")
}

/// Whether a shared object holds output (an encoded `PendingEpoch`)
/// rather than a window (an encoded `AggregateSnapshot`).
pub fn is_output_object(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("out"))
}

/// The checkpoint that wrote a shared object, from its name.
pub fn object_epoch(name: &str) -> Option<u64> {
    name.rsplit_once(".e")?.1.parse().ok()
}

/// Shared objects retention may delete: those no retained complete
/// checkpoint (savepoints included) references, written by a checkpoint no
/// newer than the newest complete one.
///
/// A newer object may belong to a checkpoint still in progress. An older
/// one that a checkpoint in progress references is also referenced by a
/// complete checkpoint retention keeps: either the newest complete one of
/// the actor's generation (the actor wrote the object before it and has
/// not changed the window since), or, before its generation completed
/// any, the checkpoint it restored from, which the coordinator keeps until
/// then (`ClusterState::restored_from`). A name that does not parse is
/// kept: retention deletes only what it understands.
pub fn to_delete(
    objects: &[String],
    referenced: &BTreeSet<String>,
    newest_complete: u64,
) -> Vec<String> {
    objects
        .iter()
        .filter(|o| !referenced.contains(*o))
        .filter(|o| object_epoch(o).is_some_and(|e| e <= newest_complete))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_epoch() {
        let n = object_name("aggregate-2", 1_700_000_040_000, 17);
        assert_eq!(n, "aggregate-2/w1700000040000.e00000000000000000017");
        assert_eq!(object_epoch(&n), Some(17));
        assert_eq!(object_epoch(&object_name("a", -60_000, 3)), Some(3));
        assert_eq!(object_epoch("aggregate-0/garbage"), None);
        let out = output_object_name("aggregate-1", 9, 12);
        assert_eq!(out, "aggregate-1/out9.e00000000000000000012");
        assert_eq!(object_epoch(&out), Some(12));
        assert!(is_output_object(&out) && !is_output_object(&n));
    }

    #[test]
    fn only_unreferenced_objects_of_finished_checkpoints_go() {
        let objs: Vec<String> = [
            object_name("aggregate-0", 0, 4),      // referenced by 6
            object_name("aggregate-0", 60_000, 5), // superseded by 6's
            object_name("aggregate-0", 60_000, 6), // referenced by 6
            object_name("aggregate-0", 60_000, 7), // checkpoint 7 in progress
            "aggregate-0/unknown".to_owned(),
        ]
        .into_iter()
        .collect();
        let referenced: BTreeSet<String> = [objs[0].clone(), objs[2].clone()].into();
        assert_eq!(to_delete(&objs, &referenced, 6), vec![objs[1].clone()]);
        // Nothing complete yet: nothing goes.
        assert!(to_delete(&objs, &BTreeSet::new(), 0).is_empty());
        // Once 7 completes without referencing its own object (cannot
        // happen, but retention must still be safe), it may go.
        assert_eq!(
            to_delete(&objs, &referenced, 7),
            vec![objs[1].clone(), objs[3].clone()]
        );
    }
}
