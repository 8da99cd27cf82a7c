//! The [`Store`](super::Store) implementation, written once for both
//! backends. The SQL is identical; only the sqlx database type differs, and
//! sqlx's generic bounds for that are far noisier than this macro.

/// Implements `Store` for `$store` (a struct with a `pool: Pool<$db>` field).
macro_rules! impl_store {
    ($store:ty, $db:ty, $name:literal) => {
        #[async_trait::async_trait]
        impl $crate::db::Store for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn ping(&self) -> Result<(), $crate::db::DbError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err($crate::db::op("ping"))?;
                Ok(())
            }

            async fn load_offsets(
                &self,
                topic: &str,
            ) -> Result<std::collections::HashMap<i32, i64>, $crate::db::DbError> {
                let rows: Vec<(i32, i64)> = sqlx::query_as($crate::db::sql::LOAD_OFFSETS)
                    .bind(topic)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::db::op("load offsets"))?;
                Ok(rows.into_iter().collect())
            }

            async fn apply(
                &self,
                batch: &$crate::db::Batch,
            ) -> Result<$crate::db::Applied, $crate::db::DbError> {
                use $crate::db::{op, sql, CHUNK};
                let mut out = $crate::db::Applied::default();
                let mut tx = self.pool.begin().await.map_err(op("begin batch"))?;
                for chunk in batch.counts.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(sql::UPSERT_COUNTS_HEAD);
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.slice.as_str())
                            .push_bind(r.ad_id.as_str())
                            .push_bind(r.window_start)
                            .push_bind(r.clicks)
                            .push_bind(r.impressions)
                            .push_bind(r.epoch)
                            .push_bind(r.revision);
                    });
                    qb.push(sql::UPSERT_COUNTS_TAIL);
                    out.counts_written += qb
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(op("upsert counts"))?
                        .rows_affected();
                }
                for chunk in batch.top_n.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(sql::UPSERT_TOP_HEAD);
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.slice.as_str())
                            .push_bind(r.window_minutes)
                            .push_bind(r.window_end)
                            .push_bind(r.ads_json.as_str())
                            .push_bind(r.epoch)
                            .push_bind(r.revision)
                            .push_bind(r.producer.as_str());
                    });
                    qb.push(sql::UPSERT_TOP_TAIL);
                    out.top_n_written += qb
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(op("upsert top_n"))?
                        .rows_affected();
                }
                for (partition, next) in &batch.offsets {
                    sqlx::query(sql::UPSERT_OFFSET)
                        .bind(batch.topic.as_str())
                        .bind(*partition)
                        .bind(*next)
                        .execute(&mut *tx)
                        .await
                        .map_err(op("store offsets"))?;
                }
                if let Some(end) = batch.latest_window_end {
                    sqlx::query(sql::UPSERT_LATEST)
                        .bind(end)
                        .execute(&mut *tx)
                        .await
                        .map_err(op("store freshness"))?;
                }
                tx.commit().await.map_err(op("commit batch"))?;
                Ok(out)
            }

            async fn ad_totals(
                &self,
                slice: &str,
                ad_id: &str,
                from: i64,
                to: i64,
            ) -> Result<(i64, i64), $crate::db::DbError> {
                sqlx::query_as($crate::db::sql::AD_TOTALS)
                    .bind(slice)
                    .bind(ad_id)
                    .bind(from)
                    .bind(to)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::db::op("ad totals"))
            }

            async fn ad_minutes(
                &self,
                slice: &str,
                ad_id: &str,
                from: i64,
                to: i64,
            ) -> Result<Vec<$crate::db::MinuteRow>, $crate::db::DbError> {
                let rows: Vec<(i64, i64, i64)> = sqlx::query_as($crate::db::sql::AD_MINUTES)
                    .bind(slice)
                    .bind(ad_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::db::op("ad minutes"))?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(window_start, clicks, impressions)| $crate::db::MinuteRow {
                            window_start,
                            clicks,
                            impressions,
                        },
                    )
                    .collect())
            }

            async fn top_from_minutes(
                &self,
                slice: &str,
                from: i64,
                to: i64,
                limit: i64,
            ) -> Result<Vec<$crate::db::AdTotals>, $crate::db::DbError> {
                let rows: Vec<(String, i64, i64)> =
                    sqlx::query_as($crate::db::sql::TOP_FROM_MINUTES)
                        .bind(slice)
                        .bind(from)
                        .bind(to)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::db::op("top from minutes"))?;
                Ok(rows
                    .into_iter()
                    .map(|(ad_id, clicks, impressions)| $crate::db::AdTotals {
                        ad_id,
                        clicks,
                        impressions,
                    })
                    .collect())
            }

            async fn precomputed_top(
                &self,
                slice: &str,
                window_minutes: i64,
                window_end: i64,
            ) -> Result<Option<String>, $crate::db::DbError> {
                let row: Option<(String,)> = sqlx::query_as($crate::db::sql::PRECOMPUTED_TOP)
                    .bind(slice)
                    .bind(window_minutes)
                    .bind(window_end)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::db::op("precomputed top"))?;
                Ok(row.map(|r| r.0))
            }

            async fn impressions_of(
                &self,
                slice: &str,
                ad_ids: &[String],
                from: i64,
                to: i64,
            ) -> Result<std::collections::HashMap<String, i64>, $crate::db::DbError> {
                if ad_ids.is_empty() {
                    return Ok(Default::default());
                }
                let sql = $crate::db::sql::impressions_of(ad_ids.len());
                let mut q = sqlx::query_as::<_, (String, i64)>(&sql)
                    .bind(slice)
                    .bind(from)
                    .bind(to);
                for id in ad_ids {
                    q = q.bind(id.as_str());
                }
                let rows = q
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::db::op("impressions of ads"))?;
                Ok(rows.into_iter().collect())
            }

            async fn latest_window_end(&self) -> Result<Option<i64>, $crate::db::DbError> {
                let row: Option<(i64,)> = sqlx::query_as($crate::db::sql::LATEST)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::db::op("latest window end"))?;
                Ok(row.map(|r| r.0))
            }

            async fn counts_in_range(
                &self,
                from: i64,
                to: i64,
            ) -> Result<Vec<$crate::db::CountRow>, $crate::db::DbError> {
                type Row = (String, String, i64, i64, i64, i64, i64);
                let rows: Vec<Row> = sqlx::query_as($crate::db::sql::COUNTS_IN_RANGE)
                    .bind(from)
                    .bind(to)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::db::op("counts in range"))?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(slice, ad_id, window_start, clicks, impressions, epoch, revision)| {
                            $crate::db::CountRow {
                                slice,
                                ad_id,
                                window_start,
                                clicks,
                                impressions,
                                epoch,
                                revision,
                            }
                        },
                    )
                    .collect())
            }

            async fn record_reconcile(
                &self,
                run: &$crate::db::ReconcileRun,
            ) -> Result<(), $crate::db::DbError> {
                sqlx::query($crate::db::sql::UPSERT_RECONCILE)
                    .bind(run.run_at_ms)
                    .bind(run.range_from)
                    .bind(run.range_to)
                    .bind(run.cells)
                    .bind(run.matched)
                    .bind(run.mismatched)
                    .bind(run.missing_in_db)
                    .bind(run.missing_in_recount)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::db::op("record reconcile run"))?;
                Ok(())
            }

            async fn last_reconcile(
                &self,
            ) -> Result<Option<$crate::db::ReconcileRun>, $crate::db::DbError> {
                type Row = (i64, i64, i64, i64, i64, i64, i64, i64);
                let row: Option<Row> = sqlx::query_as($crate::db::sql::LAST_RECONCILE)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::db::op("last reconcile run"))?;
                Ok(row.map(|r| $crate::db::ReconcileRun {
                    run_at_ms: r.0,
                    range_from: r.1,
                    range_to: r.2,
                    cells: r.3,
                    matched: r.4,
                    mismatched: r.5,
                    missing_in_db: r.6,
                    missing_in_recount: r.7,
                }))
            }
        }
    };
}

pub(crate) use impl_store;
