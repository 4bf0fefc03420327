//! Permissions per access key, in IAM's terms: statements that allow or deny actions
//! (`firehose:PutRecordBatch`, `firehose:Describe*`, `firehose:*`) on resources (delivery-stream
//! ARNs, `*` and `?` wildcards). A request is allowed when a statement allows it and none denies
//! it: an explicit deny wins, and what no statement allows is denied. Pure.

use serde::Deserialize;

/// One value or a list, as IAM policies write them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[[auth.keys.policy]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatement {
    pub effect: String,
    pub action: OneOrMany,
    /// Default `*`.
    pub resource: Option<OneOrMany>,
}

/// A validated statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub allow: bool,
    /// Lowercased: IAM compares actions without case.
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// A key's statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

/// What a policy says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No statement allows it.
    NotAllowed,
    /// A statement denies it.
    Denied,
}

impl Policy {
    /// Validates `raw` (`path`: where it is, for errors).
    pub fn validate(raw: Vec<RawStatement>, path: &str) -> Result<Policy, Vec<String>> {
        let mut errors = Vec::new();
        let mut statements = Vec::new();
        for (i, s) in raw.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            let allow = match s.effect.as_str() {
                "Allow" => true,
                "Deny" => false,
                other => {
                    errors.push(format!("{at}.effect: {other:?} is not Allow or Deny"));
                    continue;
                }
            };
            let actions = s.action.into_vec();
            for a in &actions {
                if !(a == "*" || a.to_ascii_lowercase().starts_with("firehose:")) {
                    errors.push(format!(
                        "{at}.action: {a:?} is not a firehose action (firehose:<Operation>, wildcards allowed)"
                    ));
                }
            }
            if actions.is_empty() {
                errors.push(format!("{at}.action: names no action"));
            }
            let resources = s
                .resource
                .map_or_else(|| vec!["*".to_string()], OneOrMany::into_vec);
            statements.push(Statement {
                allow,
                actions: actions.iter().map(|a| a.to_ascii_lowercase()).collect(),
                resources,
            });
        }
        match errors.is_empty() {
            true => Ok(Policy { statements }),
            false => Err(errors),
        }
    }

    /// What the policy says of `action` (`firehose:PutRecordBatch`) on `resource` (a stream's
    /// ARN, or `*` for an action on no stream).
    pub fn decide(&self, action: &str, resource: &str) -> Decision {
        let action = action.to_ascii_lowercase();
        let mut allowed = false;
        for s in &self.statements {
            let applies = s.actions.iter().any(|a| wildcard(a, &action))
                && s.resources.iter().any(|r| wildcard(r, resource));
            if applies && !s.allow {
                return Decision::Denied;
            }
            allowed |= applies;
        }
        if allowed {
            Decision::Allowed
        } else {
            Decision::NotAllowed
        }
    }
}

/// IAM's pattern match: `*` any run of characters, `?` any one.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // The last `*` seen and where in `t` it was matched up to; backtrack there on a mismatch.
    let (mut pi, mut ti, mut star) = (0, 0, None);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Policy {
        #[derive(Deserialize)]
        struct Doc {
            policy: Vec<RawStatement>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        Policy::validate(doc.policy, "auth.keys[0].policy").unwrap()
    }

    const ARN: &str = "arn:aws:firehose:us-east-1:000000000000:deliverystream/";

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard("firehose:*", "firehose:putrecordbatch"));
        assert!(wildcard(
            "firehose:describe*",
            "firehose:describedeliverystream"
        ));
        assert!(wildcard("a*b*c", "aXbYbZc"));
        assert!(wildcard("clicks-?", "clicks-1"));
        assert!(!wildcard("clicks-?", "clicks-10"));
        assert!(!wildcard("firehose:put*", "firehose:createdeliverystream"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn an_allow_grants_only_what_it_names_and_a_deny_wins() {
        let p = policy(&format!(
            r#"
[[policy]]
effect = "Allow"
action = ["firehose:PutRecord*", "firehose:Describe*"]
resource = "{ARN}clicks*"
[[policy]]
effect = "Allow"
action = "firehose:ListDeliveryStreams"
[[policy]]
effect = "Deny"
action = "firehose:*"
resource = "{ARN}clicks-secret"
"#
        ));
        use Decision::*;
        for (action, stream, decision) in [
            ("firehose:PutRecordBatch", "clicks", Allowed),
            ("firehose:DescribeDeliveryStream", "clicks-eu", Allowed),
            ("firehose:PutRecordBatch", "orders", NotAllowed),
            ("firehose:DeleteDeliveryStream", "clicks", NotAllowed),
            ("firehose:PutRecordBatch", "clicks-secret", Denied),
        ] {
            let resource = format!("{ARN}{stream}");
            assert_eq!(
                p.decide(action, &resource),
                decision,
                "{action} on {stream}"
            );
        }
        assert_eq!(p.decide("firehose:ListDeliveryStreams", "*"), Allowed);
    }

    #[test]
    fn bad_statements_are_refused_with_their_path() {
        #[derive(Deserialize)]
        struct Doc {
            policy: Vec<RawStatement>,
        }
        let doc: Doc = toml::from_str(
            "[[policy]]\neffect = \"Maybe\"\naction = \"x\"\n[[policy]]\neffect = \"Allow\"\naction = \"s3:GetObject\"",
        )
        .unwrap();
        let errors = Policy::validate(doc.policy, "auth.keys[0].policy").unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].starts_with("auth.keys[0].policy[0].effect"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("auth.keys[0].policy[1].action"),
            "{errors:?}"
        );
    }
}
