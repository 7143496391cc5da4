//! The embedded backend. (Skeleton: filled in by the store work item.)
