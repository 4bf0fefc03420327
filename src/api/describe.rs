//! DescribeDeliveryStream's answer: a stream's definition in force, in Firehose's shape, with
//! the defaults it runs with filled in.

use serde_json::{Value, json};

use crate::registry::{AtRest, DESTINATION_ID, StreamView};

/// `{"DeliveryStreamDescription": …}`.
pub fn description(view: &StreamView) -> Value {
    let spec = &view.current.spec;
    let mut destination = spec.destination.description();
    destination.insert("DestinationId".into(), DESTINATION_ID.into());
    let mut out = json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": view.name,
            "DeliveryStreamARN": view.arn,
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamEncryptionConfiguration": at_rest_description(&view.at_rest),
            "DeliveryStreamType": spec.stream_type,
            "VersionId": view.version.to_string(),
            "CreateTimestamp": view.created,
            "LastUpdateTimestamp": view.updated,
            "Destinations": [destination],
            "HasMoreDestinations": false,
        }
    });
    // A delivery failure retrying cannot fix, as Firehose reports one: the stream stays ACTIVE
    // and says what is wrong.
    if let Some(blocked) = &view.blocked {
        let (kind, details) = blocked.failure_description();
        out["DeliveryStreamDescription"]["FailureDescription"] =
            json!({ "Type": kind, "Details": details });
    }
    out
}

/// `DeliveryStreamEncryptionConfiguration`.
fn at_rest_description(at_rest: &AtRest) -> Value {
    let mut out = json!({ "Status": at_rest.status });
    if let Some(key) = &at_rest.key {
        out["KeyType"] = json!(key.key_type());
        if let Some(arn) = key.key_arn() {
            out["KeyARN"] = json!(arn);
        }
    }
    if let Some((kind, details)) = &at_rest.failure {
        out["FailureDescription"] = json!({ "Type": kind, "Details": details });
    }
    out
}
