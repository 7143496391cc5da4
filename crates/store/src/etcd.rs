//! The etcd v3 backend. (Skeleton: filled in by the store work item.)
