//! The AWS SDK configuration of a connection, built in one place for every AWS client
//! flow makes (S3 stores, EC2 for EBS snapshots and volumes): region, endpoint and
//! credentials, so that all of them resolve them alike; and what an SDK error says
//! (the service's code and message, whether trying again may help), read alike too.
//!
//! - Credentials: the connection's static keys when it gives both, else the AWS
//!   default chain (environment, profile, web identity, IMDS); one key without the
//!   other is refused, never half-used.
//! - Region: the connection's; with a custom `endpoint` and no region, `us-east-1`
//!   (S3-compatible stores rarely care, the SDK needs one); else the chain's.
//! - Endpoint: the connection's, for S3-compatible stores and test stacks.

use aws_config::SdkConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::plan::Secret;

/// What a connection says about reaching AWS.
#[derive(Clone, Copy, Debug, Default)]
pub struct AwsSettings<'a> {
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
    pub access_key_id: Option<&'a Secret>,
    pub secret_access_key: Option<&'a Secret>,
}

/// The region a client of `settings` uses when the connection names none and the
/// chain has none either.
pub const FALLBACK_REGION: &str = "us-east-1";

/// The SDK configuration of `settings`; Err says what is wrong with them (to be
/// prefixed with the connection's name by the caller).
pub async fn sdk_config(settings: AwsSettings<'_>) -> Result<SdkConfig, String> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let region = settings
        .region
        .or_else(|| settings.endpoint.map(|_| FALLBACK_REGION));
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    match (settings.access_key_id, settings.secret_access_key) {
        (Some(id), Some(secret)) => {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                id.expose(),
                secret.expose(),
                None,
                None,
                "flow-plan",
            ));
        }
        (None, None) => {}
        _ => {
            return Err(
                "give both `access_key_id` and `secret_access_key`, or neither to use \
                        the AWS default credential chain"
                    .into(),
            )
        }
    }
    if let Some(endpoint) = settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    Ok(loader.load().await)
}

/// What an AWS SDK error says: the service's code (`IdempotentParameterMismatch`),
/// one line of text with the code, message and HTTP status, and whether a retry may
/// help (timeouts, dropped connections, throttling, 5xx).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsError {
    pub code: Option<String>,
    pub status: Option<u16>,
    pub text: String,
    pub retryable: bool,
}

impl AwsError {
    pub fn of<E>(err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let (code, message) = match &err {
            SdkError::ServiceError(e) => (
                e.err().code().map(str::to_string),
                e.err().message().map(str::to_string),
            ),
            _ => (None, None),
        };
        let retryable = match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => {
                matches!(status, Some(409 | 429 | 500 | 502 | 503 | 504))
                    || matches!(
                        code.as_deref(),
                        Some(
                            "SlowDown"
                                | "RequestTimeout"
                                | "InternalError"
                                | "ServiceUnavailable"
                                | "Unavailable"
                                | "RequestLimitExceeded"
                        )
                    )
            }
            _ => false,
        };
        let mut text = match (&code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.clone(),
            (None, Some(m)) => m,
            (None, None) => {
                // Walk the source chain: dispatch failures hide the reason there.
                let mut msg = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                msg
            }
        };
        if let Some(status) = status {
            text.push_str(&format!(" (HTTP {status})"));
        }
        AwsError {
            code,
            status,
            text,
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_without_the_other_is_refused() {
        let id = Secret::new("AKIDEXAMPLE");
        let err = sdk_config(AwsSettings {
            access_key_id: Some(&id),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert!(err.contains("give both"), "{err}");
    }

    #[tokio::test]
    async fn an_endpoint_without_a_region_gets_the_fallback_region() {
        let config = sdk_config(AwsSettings {
            endpoint: Some("http://127.0.0.1:1"),
            access_key_id: Some(&Secret::new("a")),
            secret_access_key: Some(&Secret::new("b")),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(config.region().map(|r| r.as_ref()), Some(FALLBACK_REGION));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:1"));
    }
}
