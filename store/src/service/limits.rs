//! Request size limits, answered the way grpc-go (and so etcd) answers them.
//!
//! Two limits apply, as in etcd:
//! - a request whose replicated form exceeds `--max-request-bytes` is refused by the KV adapter
//!   with "etcdserver: request is too large" (InvalidArgument);
//! - a gRPC message larger than `--max-request-bytes` + 512 KiB is refused by the transport before
//!   it is read. tonic says so with `OutOfRange` and its own wording; grpc-go, which etcd clients
//!   were written against, says `ResourceExhausted` "grpc: received message larger than max (N vs.
//!   M)". [`GrpcGoLimits`] rewrites tonic's answer into grpc-go's, so clients see etcd's status.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};
use tonic::codegen::http;

/// Characters escaped in a grpc-message header (the set tonic uses).
const MESSAGE_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'?')
    .add(b'{')
    .add(b'}');

/// tonic's description of an oversized request (see `tonic::codec::decode`).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Rewrites tonic's oversized-request status into grpc-go's (see the module doc).
pub fn grpc_go_limits<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let is_out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !is_out_of_range {
        return response;
    }
    // grpc-message is percent-encoded on the wire (gRPC over HTTP/2 spec).
    let Some(sizes) = headers
        .get("grpc-message")
        .and_then(|v| percent_decode(v.as_bytes()).decode_utf8().ok())
        .and_then(|m| m.strip_prefix(TONIC_TOO_LARGE).and_then(parse_sizes))
    else {
        return response;
    };
    let message = format!(
        "grpc: received message larger than max ({} vs. {})",
        sizes.0, sizes.1
    );
    let encoded = utf8_percent_encode(&message, MESSAGE_ESCAPES).to_string();
    if let Ok(value) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
    response
}

/// Parses "N bytes, the limit is: M bytes".
fn parse_sizes(rest: &str) -> Option<(usize, usize)> {
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// The layer type installed on the client listeners.
pub type GrpcGoLimits<B> =
    tower::util::MapResponseLayer<fn(http::Response<B>) -> http::Response<B>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_oversize_status_becomes_grpc_gos() {
        let response = http::Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "Error,%20decoded%20message%20length%20too%20large:%20found%203145739%20bytes,%20the%20limit%20is:%202097152%20bytes",
            )
            .body(())
            .unwrap();
        let response = grpc_go_limits(response);
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(
            response.headers()["grpc-message"],
            "grpc:%20received%20message%20larger%20than%20max%20(3145739%20vs.%202097152)"
        );
    }

    #[test]
    fn other_statuses_pass_untouched() {
        let response = http::Response::builder()
            .header("grpc-status", "11")
            .header(
                "grpc-message",
                "etcdserver: mvcc: required revision is a future revision",
            )
            .body(())
            .unwrap();
        let response = grpc_go_limits(response);
        assert_eq!(response.headers()["grpc-status"], "11");
    }
}
