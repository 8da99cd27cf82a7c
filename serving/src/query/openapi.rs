//! The generated OpenAPI document served at `/openapi.json`. Clients and
//! the schemathesis fuzz test read the contract from here, so it is built
//! from the handlers' own annotations rather than written by hand.
//!
//! Handlers take every query parameter as text (so a bad value gets our own
//! 400 naming it), which the annotations describe as plain strings.
//! [`document`] then tightens each parameter's schema to what is really
//! accepted, including limits that come from the configuration (retention,
//! named filters).

use super::error::ErrorBody;
use super::handlers::{self, AdMinutes, AggregatedCount, Info, Minute, PopularAd, PopularAds};
use super::params::{Filters, MAX_AD_ID_LEN, MAX_COUNT, MAX_COUNTRY_LEN, MAX_TIME_MS, MIN_TIME_MS};
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::OpenApi;

/// The API description as annotated on the handlers.
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

fn integer(min: i64, max: i64) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(min))
            .maximum(Some(max))
            .build(),
    ))
}

fn time() -> RefOr<Schema> {
    let date_time = ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
    let any = AnyOfBuilder::new()
        .item(integer(MIN_TIME_MS, MAX_TIME_MS))
        .item(date_time.build())
        .build();
    RefOr::T(Schema::AnyOf(any))
}

fn escape(id: &str) -> String {
    id.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

fn filter(filters: &Filters) -> RefOr<Schema> {
    let mut alts = vec![r"\*".to_string()];
    if filters.country {
        alts.push(format!("country=.{{1,{MAX_COUNTRY_LEN}}}"));
    }
    alts.extend(filters.ids.iter().map(|id| escape(id)));
    let pattern = format!("^({})$", alts.join("|"));
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .build(),
    ))
}

fn ad_id() -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_AD_ID_LEN))
            .build(),
    ))
}

/// The document for a service with these filters and this longest window.
pub fn document(filters: &Filters, max_window: u32) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for item in doc.paths.paths.values_mut() {
        let Some(op) = item.get.as_mut() else {
            continue;
        };
        for p in op.parameters.iter_mut().flatten() {
            p.schema = Some(match p.name.as_str() {
                "count" => integer(1, i64::from(MAX_COUNT)),
                "window" => integer(1, i64::from(max_window)),
                "from" | "to" => time(),
                "filter" => filter(filters),
                "ad_id" => ad_id(),
                _ => continue,
            });
        }
    }
    doc
}
