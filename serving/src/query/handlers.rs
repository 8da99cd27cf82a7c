//! The API's handlers. Each one parses its parameters (400 naming the
//! parameter on failure), asks the [`Store`](crate::db::Store) and shapes
//! the JSON answer, including the time range actually covered.

use super::error::{ApiError, ErrorBody};
use super::params::{self, ceil_to, ctr, floor_to, MAX_COUNT};
use super::AppState;
use adclick_core::topn::AdClicks;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query of `aggregated_count`. Every field is text so that bad values get
/// our own 400 naming the parameter rather than a generic rejection.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CountQuery {
    /// Start, epoch ms or RFC 3339; rounded down to a window start. Default: `to` minus one window.
    pub from: Option<String>,
    /// End (exclusive), epoch ms or RFC 3339; rounded up to a window end. Default: the latest closed window end.
    pub to: Option<String>,
    /// `*` (default), `country=<code>` or a named filter id.
    pub filter: Option<String>,
}

/// Clicks of one ad over the covered range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AggregatedCount {
    /// The ad.
    pub ad_id: String,
    /// Clicks in `[from, to)`.
    pub count: i64,
    /// Impressions in `[from, to)`.
    pub impressions: i64,
    /// The slice counted.
    pub filter: String,
    /// Start actually covered (a window start), epoch ms.
    pub from: i64,
    /// End actually covered (a window end, exclusive), epoch ms.
    pub to: i64,
}

/// Query of `popular_ads`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PopularQuery {
    /// How many ads, 1..=1000. Default: the configured N of top-N.
    pub count: Option<String>,
    /// Window length in minutes (windows), 1..=retention. Default: 1.
    pub window: Option<String>,
    /// `*` (default), `country=<code>` or a named filter id.
    pub filter: Option<String>,
    /// End (exclusive), epoch ms or RFC 3339; rounded down to a window end. Default: the latest closed window end.
    pub to: Option<String>,
}

/// One ranked ad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PopularAd {
    /// The ad.
    pub ad_id: String,
    /// Clicks over the window.
    pub clicks: i64,
    /// Impressions over the window.
    pub impressions: i64,
    /// Click-through rate, clicks / impressions; null without impressions.
    pub ctr: Option<f64>,
}

/// The most-clicked ads over `[from, to)`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PopularAds {
    /// Ad ids, best first.
    pub ad_ids: Vec<String>,
    /// The same ads with their counts and CTR.
    pub ads: Vec<PopularAd>,
    /// Window length in minutes (windows).
    pub window: u32,
    /// The slice ranked.
    pub filter: String,
    /// Start covered, epoch ms.
    pub from: i64,
    /// End covered (exclusive), epoch ms.
    pub to: i64,
    /// `precomputed` (stored top-N rows) or `computed` (SQL over minute rows).
    pub source: String,
    /// End of the latest closed window in the database (data freshness).
    pub latest_closed: Option<i64>,
}

/// Query of `minutes` (the dashboard's chart).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MinutesQuery {
    /// Number of windows back from `to`, 1..=retention. Default: 30.
    pub window: Option<String>,
    /// `*` (default), `country=<code>` or a named filter id.
    pub filter: Option<String>,
    /// End (exclusive), epoch ms or RFC 3339. Default: the latest closed window end.
    pub to: Option<String>,
}

/// One window of one ad.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Minute {
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Clicks.
    pub clicks: i64,
    /// Impressions.
    pub impressions: i64,
}

/// Per-window counts of one ad; windows without clicks are absent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdMinutes {
    /// The ad.
    pub ad_id: String,
    /// The slice.
    pub filter: String,
    /// Start covered, epoch ms.
    pub from: i64,
    /// End covered (exclusive), epoch ms.
    pub to: i64,
    /// Oldest first.
    pub minutes: Vec<Minute>,
}

/// What the dashboard needs to build its selectors.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// Accepted `filter` values (`country=<code>` stands for any country).
    pub filters: Vec<String>,
    /// Window lengths whose top-N is precomputed.
    pub top_windows: Vec<u32>,
    /// N of the precomputed top-N.
    pub top_n: u32,
    /// Length of one window, seconds.
    pub window_secs: u64,
    /// Longest window accepted, minutes.
    pub retention_minutes: u32,
    /// End of the latest closed window in the database.
    pub latest_closed: Option<i64>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(ad_id) = p.map_err(|e| ApiError::bad("ad_id", e.body_text()))?;
    params::check_ad_id(&ad_id)?;
    Ok(ad_id)
}

impl AppState {
    async fn latest_or_now(&self) -> Result<(Option<i64>, i64), ApiError> {
        let latest = self.store.latest_window_end().await?;
        let fallback = floor_to(adclick_runtime::now_ms(), self.window_ms);
        Ok((latest, latest.unwrap_or(fallback)))
    }

    /// Longest accepted `window`, in windows: the retention.
    pub fn max_window(&self) -> u32 {
        (u64::from(self.retention_minutes) * 60_000 / self.window_ms.max(1) as u64)
            .clamp(1, u64::from(u32::MAX)) as u32
    }

    fn window(&self, value: Option<&str>, default: u32) -> Result<u32, ApiError> {
        let max = self.max_window();
        match value {
            None => Ok(default.min(max)),
            Some(v) => params::parse_bounded("window", v, max, "the retention"),
        }
    }
}

/// Clicks of one ad between `from` and `to`.
#[utoipa::path(get, path = "/v1/ads/{ad_id}/aggregated_count",
    params(("ad_id" = String, Path, description = "The ad"), CountQuery),
    responses(
        (status = 200, description = "Clicks over the covered range", body = AggregatedCount),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)))]
pub async fn aggregated_count(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<CountQuery>, QueryRejection>,
) -> Result<Json<AggregatedCount>, ApiError> {
    let ad_id = path(p)?;
    let q = query(q)?;
    let slice = s.filters.resolve(q.filter.as_deref())?;
    let from = q
        .from
        .as_deref()
        .map(|v| params::parse_time("from", v))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|v| params::parse_time("to", v))
            .transpose()?;
    let to = match to {
        Some(t) => t,
        None => s.latest_or_now().await?.1,
    };
    let from = from.unwrap_or(to.saturating_sub(s.window_ms).max(params::MIN_TIME_MS));
    if from > to {
        return Err(ApiError::bad(
            "from",
            format!("from ({from}) is after to ({to})"),
        ));
    }
    let (from, to) = (floor_to(from, s.window_ms), ceil_to(to, s.window_ms));
    let (count, impressions) = s.store.ad_totals(&slice, &ad_id, from, to).await?;
    Ok(Json(AggregatedCount {
        ad_id,
        count,
        impressions,
        filter: slice,
        from,
        to,
    }))
}

/// The `count` most-clicked ads over the `window` minutes before `to`.
#[utoipa::path(get, path = "/v1/ads/popular_ads",
    params(PopularQuery),
    responses(
        (status = 200, description = "Ranked ads, best first", body = PopularAds),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)))]
pub async fn popular_ads(
    State(s): State<AppState>,
    q: Result<Query<PopularQuery>, QueryRejection>,
) -> Result<Json<PopularAds>, ApiError> {
    let q = query(q)?;
    let count = match q.count.as_deref() {
        Some(v) => params::parse_bounded("count", v, MAX_COUNT, "the API limit")?,
        None => s.top_n.min(MAX_COUNT),
    };
    let window = s.window(q.window.as_deref(), 1)?;
    let slice = s.filters.resolve(q.filter.as_deref())?;
    let (latest, default_to) = s.latest_or_now().await?;
    let to = match q.to.as_deref() {
        Some(v) => floor_to(params::parse_time("to", v)?, s.window_ms),
        None => default_to,
    };
    let span = i64::from(window) * s.window_ms;
    if to - span < params::MIN_TIME_MS {
        return Err(ApiError::bad("to", "to minus window lies before year 1"));
    }
    let from = to - span;
    let mut source = "computed";
    let mut ads = None;
    if s.top_windows.contains(&window) && count <= s.top_n {
        if let Some(json) = s
            .store
            .precomputed_top(&slice, i64::from(window), to)
            .await?
        {
            match serde_json::from_str::<Vec<AdClicks>>(&json) {
                Ok(list) => {
                    let list: Vec<AdClicks> = list.into_iter().take(count as usize).collect();
                    let ids: Vec<String> = list.iter().map(|a| a.ad_id.clone()).collect();
                    let imps = s.store.impressions_of(&slice, &ids, from, to).await?;
                    source = "precomputed";
                    ads = Some(
                        list.into_iter()
                            .map(|a| {
                                let clicks = i64::try_from(a.clicks).unwrap_or(i64::MAX);
                                let impressions = imps.get(&a.ad_id).copied().unwrap_or(0);
                                PopularAd {
                                    ctr: ctr(clicks, impressions),
                                    ad_id: a.ad_id,
                                    clicks,
                                    impressions,
                                }
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                Err(e) => {
                    tracing::warn!(%slice, window, to, "unreadable top_n row, computing instead: {e}")
                }
            }
        }
    }
    let ads = match ads {
        Some(a) => a,
        None => s
            .store
            .top_from_minutes(&slice, from, to, i64::from(count))
            .await?
            .into_iter()
            .map(|t| PopularAd {
                ctr: ctr(t.clicks, t.impressions),
                ad_id: t.ad_id,
                clicks: t.clicks,
                impressions: t.impressions,
            })
            .collect(),
    };
    metrics::counter!("query_popular_ads_total", "source" => source).increment(1);
    Ok(Json(PopularAds {
        ad_ids: ads.iter().map(|a| a.ad_id.clone()).collect(),
        ads,
        window,
        filter: slice,
        from,
        to,
        source: source.into(),
        latest_closed: latest,
    }))
}

/// Per-window clicks of one ad, for charts.
#[utoipa::path(get, path = "/v1/ads/{ad_id}/minutes",
    params(("ad_id" = String, Path, description = "The ad"), MinutesQuery),
    responses(
        (status = 200, description = "Per-window counts, oldest first", body = AdMinutes),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody)))]
pub async fn ad_minutes(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<MinutesQuery>, QueryRejection>,
) -> Result<Json<AdMinutes>, ApiError> {
    let ad_id = path(p)?;
    let q = query(q)?;
    let window = s.window(q.window.as_deref(), 30)?;
    let slice = s.filters.resolve(q.filter.as_deref())?;
    let to = match q.to.as_deref() {
        Some(v) => ceil_to(params::parse_time("to", v)?, s.window_ms),
        None => s.latest_or_now().await?.1,
    };
    let from = (to - i64::from(window) * s.window_ms).max(params::MIN_TIME_MS);
    let minutes = s
        .store
        .ad_minutes(&slice, &ad_id, from, to)
        .await?
        .into_iter()
        .map(|m| Minute {
            window_start: m.window_start,
            clicks: m.clicks,
            impressions: m.impressions,
        })
        .collect();
    Ok(Json(AdMinutes {
        ad_id,
        filter: slice,
        from,
        to,
        minutes,
    }))
}

/// Filters, precomputed windows and freshness, for building a client.
#[utoipa::path(get, path = "/v1/info",
    responses(
        (status = 200, description = "Service facts", body = Info),
        (status = 503, description = "Database unavailable", body = ErrorBody)))]
pub async fn info(State(s): State<AppState>) -> Result<Json<Info>, ApiError> {
    let latest = s.store.latest_window_end().await?;
    Ok(Json(Info {
        filters: s.filters.known(),
        top_windows: s.top_windows.clone(),
        top_n: s.top_n,
        window_secs: (s.window_ms / 1000) as u64,
        retention_minutes: s.retention_minutes,
        latest_closed: latest,
    }))
}
