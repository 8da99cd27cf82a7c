//! The generated OpenAPI document served at `/openapi.json`. Clients and
//! the schemathesis fuzz test read the contract from here, so it is built
//! from the handlers' own annotations rather than written by hand.

use super::error::ErrorBody;
use super::handlers::{self, AdMinutes, AggregatedCount, Info, Minute, PopularAd, PopularAds};
use utoipa::OpenApi;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "adclick query API",
        description = "Per-minute ad click counts and top-N most clicked ads."
    ),
    paths(
        handlers::aggregated_count,
        handlers::popular_ads,
        handlers::ad_minutes,
        handlers::info
    ),
    components(schemas(
        AggregatedCount,
        PopularAds,
        PopularAd,
        AdMinutes,
        Minute,
        Info,
        ErrorBody
    ))
)]
pub struct ApiDoc;
