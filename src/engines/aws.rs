//! The AWS SDK configuration of a connection, built in one place for every AWS client
//! flow makes (S3 stores now; EC2 for EBS snapshots is next): region, endpoint and
//! credentials, so that all of them resolve them alike.
//!
//! - Credentials: the connection's static keys when it gives both, else the AWS
//!   default chain (environment, profile, web identity, IMDS); one key without the
//!   other is refused, never half-used.
//! - Region: the connection's; with a custom `endpoint` and no region, `us-east-1`
//!   (S3-compatible stores rarely care, the SDK needs one); else the chain's.
//! - Endpoint: the connection's, for S3-compatible stores and test stacks.

use aws_config::SdkConfig;

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
