//! Dynamic partitioning: the keys a record is delivered under.
//!
//! Keys come from the `MetadataExtraction` jq query ([`jq`], `!{partitionKeyFromQuery:k}`) and
//! from the transform's outcome (`!{partitionKeyFromLambda:k}`); the two are separate
//! namespaces. A record's [`Partition`] holds only the keys its stream's `Prefix` uses, so two
//! records share a partition (a buffer, an object) exactly when they share a prefix.

pub mod jq;

use std::sync::Arc;

/// One partition's keys, each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKeys {
    pub query: Vec<(String, String)>,
    pub lambda: Vec<(String, String)>,
}

/// Shared by every record (and batch) of the partition.
pub type Partition = Arc<PartitionKeys>;

impl PartitionKeys {
    pub fn query(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }

    pub fn lambda(&self, name: &str) -> Option<&str> {
        find(&self.lambda, name)
    }

    /// `k=v/k=v` for logs and error messages.
    pub fn describe(&self) -> String {
        self.query
            .iter()
            .chain(&self.lambda)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn find<'a>(keys: &'a [(String, String)], name: &str) -> Option<&'a str> {
    keys.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Evaluates the prefix for a partition: `Err` says why it cannot be used.
type PrefixCheck<'a> = Box<dyn Fn(&PartitionKeys) -> Result<(), String> + 'a>;

/// Turns a record's extracted keys into its [`Partition`]: keeps the keys the prefix uses,
/// requires each of them, and checks (once per distinct partition) that the prefix evaluates.
pub struct Partitioner<'a> {
    query_keys: Vec<String>,
    lambda_keys: Vec<String>,
    check: PrefixCheck<'a>,
    seen: std::collections::HashMap<PartitionKeys, Result<Partition, String>>,
}

impl<'a> Partitioner<'a> {
    /// `query_keys` / `lambda_keys`: the names the prefix uses; `check` evaluates the prefix.
    pub fn new(
        (query_keys, lambda_keys): (Vec<String>, Vec<String>),
        check: impl Fn(&PartitionKeys) -> Result<(), String> + 'a,
    ) -> Self {
        Partitioner {
            query_keys,
            lambda_keys,
            check: Box::new(check),
            seen: Default::default(),
        }
    }

    /// The partition of a record with these extracted keys, or why it has none.
    pub fn assign(
        &mut self,
        query: &[(String, String)],
        lambda: &[(String, String)],
    ) -> Result<Partition, String> {
        let pick = |names: &[String], have: &[(String, String)], ns: &str| {
            names
                .iter()
                .map(|name| {
                    find(have, name)
                        .map(|v| (name.clone(), v.to_string()))
                        .ok_or_else(|| {
                            format!("the record has no partition key {name:?} for !{{{ns}:{name}}}")
                        })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let keys = PartitionKeys {
            query: pick(&self.query_keys, query, "partitionKeyFromQuery")?,
            lambda: pick(&self.lambda_keys, lambda, "partitionKeyFromLambda")?,
        };
        if let Some(known) = self.seen.get(&keys) {
            return known.clone();
        }
        let result = (self.check)(&keys).map(|()| Arc::new(keys.clone()));
        self.seen.insert(keys, result.clone());
        result
    }
}

/// The keys a record's table route is made of (Iceberg): from the `MetadataExtraction` query,
/// or a transform's `otfMetadata` (partition keys named `otfMetadata.<key>`).
pub const ROUTE_KEYS: [&str; 3] = [
    "destinationDatabaseName",
    "destinationTableName",
    "operation",
];

/// The partition key a transform sets a route key under (Firehose's `metadata.otfMetadata`).
pub const OTF_METADATA: &str = "otfMetadata.";

/// Routes records to tables: a record's [`Partition`] is its route (the [`ROUTE_KEYS`] it has,
/// as query keys), so a buffer and a batch hold one table's records.
#[derive(Default)]
pub struct Router {
    seen: std::collections::HashMap<Vec<(String, String)>, Partition>,
}

impl Router {
    /// The route of a record with these extracted keys: the transform's `otfMetadata` when it
    /// names a table, else the query's; `None` when neither names one.
    pub fn assign(
        &mut self,
        query: &[(String, String)],
        lambda: &[(String, String)],
    ) -> Option<Partition> {
        let pick = |have: &[(String, String)], prefix: &str| -> Vec<(String, String)> {
            ROUTE_KEYS
                .iter()
                .filter_map(|k| {
                    let found = match prefix {
                        "" => find(have, k),
                        _ => find(have, &format!("{prefix}{k}")),
                    };
                    found.map(|v| (k.to_string(), v.to_string()))
                })
                .collect()
        };
        let names_table =
            |keys: &[(String, String)]| keys.iter().any(|(k, _)| k == "destinationTableName");
        let mut keys = pick(lambda, OTF_METADATA);
        if !names_table(&keys) {
            keys = pick(query, "");
        }
        if !names_table(&keys) {
            return None;
        }
        let route = self.seen.entry(keys.clone()).or_insert_with(|| {
            Arc::new(PartitionKeys {
                query: keys,
                lambda: Vec::new(),
            })
        });
        Some(route.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn partitions_keep_the_prefix_keys_and_are_shared() {
        let mut p = Partitioner::new((vec!["customer".into()], vec!["day".into()]), |k| {
            if k.query("customer") == Some("bad") {
                Err("too long".into())
            } else {
                Ok(())
            }
        });
        let a = p
            .assign(
                &kv(&[("customer", "1"), ("unused", "x")]),
                &kv(&[("day", "3")]),
            )
            .unwrap();
        assert_eq!(a.query, kv(&[("customer", "1")]));
        assert_eq!(a.describe(), "customer=1/day=3");
        let b = p
            .assign(
                &kv(&[("customer", "1"), ("unused", "y")]),
                &kv(&[("day", "3")]),
            )
            .unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "an unused key does not make a new partition"
        );
        let missing = p.assign(&kv(&[("customer", "1")]), &[]).unwrap_err();
        assert!(missing.contains("partitionKeyFromLambda:day"), "{missing}");
        assert_eq!(
            p.assign(&kv(&[("customer", "bad")]), &kv(&[("day", "3")])),
            Err("too long".into())
        );
    }

    #[test]
    fn routes_come_from_otf_metadata_else_the_query() {
        let mut r = Router::default();
        let query = kv(&[
            ("destinationTableName", "a"),
            ("destinationDatabaseName", "db"),
            ("x", "1"),
        ]);
        let a = r.assign(&query, &[]).unwrap();
        assert_eq!(a.query("destinationTableName"), Some("a"));
        assert_eq!(a.query("x"), None);
        let otf = kv(&[
            ("otfMetadata.destinationTableName", "b"),
            ("otfMetadata.operation", "insert"),
        ]);
        let b = r.assign(&query, &otf).unwrap();
        assert_eq!(
            (b.query("destinationTableName"), b.query("operation")),
            (Some("b"), Some("insert"))
        );
        assert!(
            Arc::ptr_eq(&a, &r.assign(&query, &[]).unwrap()),
            "one route, one partition"
        );
        assert_eq!(r.assign(&kv(&[("x", "1")]), &[]), None);
    }
}
