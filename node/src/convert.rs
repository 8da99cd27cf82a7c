//! Conversions between core types and their protobuf forms.

use adclick_core::aggregate::LocalTopN;
use adclick_core::map_batch::PartialCount;
use adclick_core::topn::AdClicks;
use adclick_proto::dataflow as pb;

/// Core partial count → protobuf.
pub fn partial_to_pb(p: PartialCount) -> pb::PartialCount {
    pb::PartialCount {
        ad_id: p.ad_id,
        window_start: p.window_start,
        slices: p.slices,
        clicks: p.clicks,
        impressions: p.impressions,
        click_keys: p.click_keys,
        impression_keys: p.impression_keys,
        raw: p.raw,
    }
}

/// Protobuf partial count → core.
pub fn partial_from_pb(p: pb::PartialCount) -> PartialCount {
    PartialCount {
        ad_id: p.ad_id,
        window_start: p.window_start,
        slices: p.slices,
        clicks: p.clicks,
        impressions: p.impressions,
        click_keys: p.click_keys,
        impression_keys: p.impression_keys,
        raw: p.raw,
    }
}

/// Core local top-N → protobuf.
pub fn top_to_pb(t: LocalTopN) -> pb::LocalTopN {
    pb::LocalTopN {
        window_end: t.window_end,
        window_minutes: t.window_minutes,
        slice: t.slice,
        ads: t
            .ads
            .into_iter()
            .map(|a| pb::AdClicks {
                ad_id: a.ad_id,
                clicks: a.clicks,
            })
            .collect(),
    }
}

/// Protobuf local top-N → core.
pub fn top_from_pb(t: pb::LocalTopN) -> LocalTopN {
    LocalTopN {
        window_end: t.window_end,
        window_minutes: t.window_minutes,
        slice: t.slice,
        ads: t
            .ads
            .into_iter()
            .map(|a| AdClicks {
                ad_id: a.ad_id,
                clicks: a.clicks,
            })
            .collect(),
    }
}
