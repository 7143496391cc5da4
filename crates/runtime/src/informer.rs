//! What an informer tells its handlers: an object applied or deleted. The informers
//! themselves, one watch and cache per resource shared by every reader, are in
//! [`crate::shared_informers`]; a handler runs after the cache has the change, so a
//! reconcile triggered by it always sees at least that state.

/// What happened to an object.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// Added or modified, or (after a re-list) present.
    Applied(&'a K),
    /// Deleted; the last state the watch saw.
    Deleted(&'a K),
}

impl<'a, K> Change<'a, K> {
    pub fn object(&self) -> &'a K {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}
