//! Step ids: the `v1` scheme (default) and the `obuilder` compatibility scheme.
