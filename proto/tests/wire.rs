//! Spot checks that the generated types put fields on the wire under etcd's
//! field numbers. A protobuf key byte is `(field_number << 3) | wire_type`,
//! with wire type 0 for varints and 2 for length-delimited fields.

use concord_proto::etcdserverpb::{
    Compare, ResponseHeader, StatusResponse, WatchResponse, compare, range_request,
};
use concord_proto::mvccpb::Event;
use prost::Message;

#[test]
fn response_header_field_numbers() {
    let header = ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    assert_eq!(header.encode_to_vec(), [0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]);
}

#[test]
fn compare_target_union_and_range_end() {
    let cmp = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Lease as i32,
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Lease(7)),
        range_end: b"l".to_vec(),
    };
    // result=1, target=2, key=3, lease=8, range_end=64 (key is two bytes).
    assert_eq!(
        cmp.encode_to_vec(),
        [
            0x08, 3, 0x10, 4, 0x1a, 1, b'k', 0x40, 7, 0x82, 0x04, 1, b'l'
        ]
    );
    assert_eq!(Compare::decode(&cmp.encode_to_vec()[..]).unwrap(), cmp);
}

#[test]
fn status_response_camel_case_fields() {
    let status = StatusResponse {
        db_size_in_use: 5,
        is_learner: true,
        raft_applied_index: 6,
        ..Default::default()
    };
    // raftAppliedIndex=7, dbSizeInUse=9, isLearner=10.
    assert_eq!(status.encode_to_vec(), [0x38, 6, 0x48, 5, 0x50, 1]);
}

#[test]
fn watch_response_events_use_field_eleven() {
    let resp = WatchResponse {
        fragment: true,
        events: vec![Event::default()],
        ..Default::default()
    };
    assert_eq!(resp.encode_to_vec(), [0x38, 1, 0x5a, 0]);
}

#[test]
fn enum_values_match_etcd() {
    assert_eq!(range_request::SortTarget::Value as i32, 4);
    assert_eq!(range_request::SortOrder::Descend as i32, 2);
    assert_eq!(concord_proto::authpb::permission::Type::Readwrite as i32, 2);
    assert_eq!(concord_proto::etcdserverpb::AlarmType::Corrupt as i32, 2);
}
