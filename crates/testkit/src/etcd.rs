//! A private etcd for tests. (Skeleton: filled in with the store work item.)
