//! Where a producer's AWS credentials and region come from, in the SDKs' order: keys given in
//! the producer's own config, then `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, then the profile (`AWS_PROFILE`, else `default`) in the shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and the shared
//! config file (`AWS_CONFIG_FILE`, else `~/.aws/config`).

use std::path::PathBuf;

use ini::Ini;

/// Static keys, as SigV4 needs them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they were found, for the start-up log line (never the secret).
    pub source: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(env_name: &str, rel: &str) -> Option<PathBuf> {
    var(env_name)
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(rel)))
}

fn profile_name() -> String {
    var("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

/// One profile's keys from a shared file: `[name]` in the credentials file, `[profile name]`
/// (or `[default]`) in the config file.
fn from_shared_file(path: &PathBuf, section: &str) -> Result<Option<Keys>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let ini = Ini::load_from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(props) = ini.section(Some(section)) else {
        return Ok(None);
    };
    match (
        props.get("aws_access_key_id"),
        props.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Some(Keys {
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            session_token: props.get("aws_session_token").map(String::from),
            source: format!("{} [{section}]", path.display()),
        })),
        _ => Ok(None),
    }
}

fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".into()
    } else {
        format!("profile {profile}")
    }
}

/// The first source that has keys; an error naming every place looked in when none does.
pub fn resolve(explicit: Option<(String, String)>) -> Result<Keys, String> {
    if let Some((id, secret)) = explicit {
        return Ok(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: None,
            source: "the config file".into(),
        });
    }
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: var("AWS_SESSION_TOKEN"),
            source: "the environment".into(),
        });
    }
    let profile = profile_name();
    let credentials = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    if let Some(path) = &credentials
        && let Some(keys) = from_shared_file(path, &profile)?
    {
        return Ok(keys);
    }
    let config = home_file("AWS_CONFIG_FILE", ".aws/config");
    if let Some(path) = &config
        && let Some(keys) = from_shared_file(path, &config_section(&profile))?
    {
        return Ok(keys);
    }
    Err(format!(
        "no AWS credentials: set awsAccessKeyId/awsSecretAccessKey in the config, \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or profile '{profile}' in {} or {}",
        credentials.map_or("~/.aws/credentials".into(), |p| p.display().to_string()),
        config.map_or("~/.aws/config".into(), |p| p.display().to_string()),
    ))
}

/// The region: the producer's own setting, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
/// `region`, the one in an `*.<region>.amazonaws.com` endpoint, else `us-east-1`.
pub fn region(explicit: Option<&str>, endpoint: &str) -> String {
    if let Some(r) = explicit.filter(|r| !r.is_empty()) {
        return r.to_string();
    }
    if let Some(r) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
        return r;
    }
    if let Some(path) = home_file("AWS_CONFIG_FILE", ".aws/config")
        && let Ok(ini) = Ini::load_from_file(&path)
        && let Some(r) = ini
            .section(Some(config_section(&profile_name())))
            .and_then(|p| p.get("region"))
    {
        return r.to_string();
    }
    let host = endpoint.split("://").last().unwrap_or(endpoint);
    let labels: Vec<&str> = host.split(['.', ':', '/']).collect();
    if let Some(i) = labels.iter().position(|l| *l == "amazonaws")
        && i >= 2
    {
        return labels[i - 1].to_string();
    }
    "us-east-1".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_keys_come_first() {
        let k = resolve(Some(("AKID".into(), "secret".into()))).unwrap();
        assert_eq!(k.access_key_id, "AKID");
        assert_eq!(k.source, "the config file");
        assert!(
            !format!("{k:?}").contains("secret"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn shared_files_give_a_profile_keys() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = A1\naws_secret_access_key = S1\n\n\
             [ci]\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token=T2\n",
        )
        .unwrap();
        let k = from_shared_file(&creds, "ci").unwrap().unwrap();
        assert_eq!(
            (k.access_key_id.as_str(), k.session_token.as_deref()),
            ("A2", Some("T2"))
        );
        assert!(from_shared_file(&creds, "absent").unwrap().is_none());
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile ci]\nregion = eu-west-1\naws_access_key_id = A3\naws_secret_access_key = S3\n",
        )
        .unwrap();
        let k = from_shared_file(&config, &config_section("ci"))
            .unwrap()
            .unwrap();
        assert_eq!(k.access_key_id, "A3");
    }

    #[test]
    fn region_from_an_aws_endpoint() {
        // Only when nothing in the environment names one (CI may set AWS_REGION).
        if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
            assert_eq!(
                region(None, "https://firehose.eu-central-1.amazonaws.com"),
                "eu-central-1"
            );
        }
        assert_eq!(
            region(Some("ap-south-1"), "http://127.0.0.1:4573"),
            "ap-south-1"
        );
    }
}
