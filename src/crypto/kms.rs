//! AWS KMS as the key service: `GenerateDataKey` (AES_256) and `Decrypt` over the KMS JSON API,
//! SigV4-signed, with the object's stream as the KMS encryption context.

use base64::Engine;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Context, DataKey, KeyError, KeyService};
use crate::aws_client::{self, CallError, ServiceEndpoint};

/// KMS at `endpoint` (`AWS_ENDPOINT_URL_KMS`, `[encryption] kms_endpoint`, or AWS itself).
pub struct Kms {
    endpoint: ServiceEndpoint,
}

impl Kms {
    pub fn new(endpoint: ServiceEndpoint) -> Kms {
        Kms { endpoint }
    }

    fn call(&self, target: &str, body: &Value) -> Result<Value, KeyError> {
        let fut = aws_client::call(&self.endpoint, "kms", target, body);
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(fut))
            }
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| KeyError::Unavailable(e.to_string()))?
                .block_on(fut),
        };
        answer.map_err(|e| match e {
            CallError::Transport(m) => KeyError::Unavailable(m),
            CallError::Service { code, message } => {
                let m = format!("{code}: {message}");
                match code.as_str() {
                    "NotFoundException" => KeyError::NotFound(m),
                    "AccessDeniedException" | "IncorrectKeyException" => KeyError::AccessDenied(m),
                    "DisabledException" => KeyError::Disabled(m),
                    "KMSInvalidStateException" => KeyError::InvalidState(m),
                    "InvalidCiphertextException" => KeyError::WrongKey(m),
                    "ValidationException" | "InvalidKeyUsageException" => KeyError::InvalidState(m),
                    _ => KeyError::Unavailable(m),
                }
            }
        })
    }
}

fn context_json(context: &Context) -> Value {
    Value::Object(
        context
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn key32(answer: &Value, field: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let text = answer[field]
        .as_str()
        .ok_or_else(|| KeyError::Unavailable(format!("KMS answered without {field}")))?;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| KeyError::Unavailable(format!("KMS's {field} is not base64")))?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::InvalidState(format!("KMS's {field} is not 32 bytes")))?;
    Ok(Zeroizing::new(key))
}

impl KeyService for Kms {
    fn provider(&self) -> &'static str {
        "aws-kms"
    }

    fn generate(&self, key_id: &str, context: &Context) -> Result<DataKey, KeyError> {
        let answer = self.call(
            "TrentService.GenerateDataKey",
            &json!({"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": context_json(context)}),
        )?;
        let plaintext = key32(&answer, "Plaintext")?;
        let wrapped = answer["CiphertextBlob"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| KeyError::Unavailable("KMS answered without CiphertextBlob".into()))?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key_id: answer["KeyId"].as_str().unwrap_or(key_id).to_string(),
        })
    }

    fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &Context,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let answer = self.call(
            "TrentService.Decrypt",
            &json!({
                "KeyId": key_id,
                "CiphertextBlob": base64::engine::general_purpose::STANDARD.encode(wrapped),
                "EncryptionContext": context_json(context),
            }),
        )?;
        key32(&answer, "Plaintext")
    }
}
