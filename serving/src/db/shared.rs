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
                for mark in &batch.replay_marks {
                    sqlx::query(sql::INSERT_REPLAY_MARK)
                        .bind(mark.epoch)
                        .bind(mark.partition)
                        .execute(&mut *tx)
                        .await
                        .map_err(op("store replay mark"))?;
                    let (seen,): (i64,) = sqlx::query_as(sql::COUNT_REPLAY_MARKS)
                        .bind(mark.epoch)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(op("count replay marks"))?;
                    let done: Option<(String, i64, i64, i64, i64, i64)> =
                        sqlx::query_as(sql::APPLIED_REPLAY)
                            .bind(mark.epoch)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(op("read applied replay"))?;
                    if seen < mark.partitions || done.is_some() {
                        continue;
                    }
                    // Every partition delivered the marker, so every value of
                    // the replay is stored: older rows of the range are what
                    // the fresh computation did not produce.
                    let counts = sqlx::query(sql::DELETE_SUPERSEDED_COUNTS)
                        .bind(mark.from)
                        .bind(mark.to)
                        .bind(mark.epoch)
                        .execute(&mut *tx)
                        .await
                        .map_err(op("delete superseded counts"))?
                        .rows_affected();
                    let top = sqlx::query(sql::DELETE_SUPERSEDED_TOP)
                        .bind(mark.from)
                        .bind(mark.to)
                        .bind(mark.epoch)
                        .execute(&mut *tx)
                        .await
                        .map_err(op("delete superseded top_n"))?
                        .rows_affected();
                    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                    sqlx::query(sql::INSERT_REPLAY_APPLIED)
                        .bind(mark.epoch)
                        .bind(mark.replay_id.as_str())
                        .bind(mark.from)
                        .bind(mark.to)
                        .bind(adclick_runtime::now_ms())
                        .bind(n(counts))
                        .bind(n(top))
                        .execute(&mut *tx)
                        .await
                        .map_err(op("record applied replay"))?;
                    out.replays_completed += 1;
                    out.rows_superseded += counts + top;
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

            async fn applied_replay(
                &self,
                epoch: i64,
            ) -> Result<Option<$crate::db::AppliedReplay>, $crate::db::DbError> {
                type Row = (String, i64, i64, i64, i64, i64);
                let row: Option<Row> = sqlx::query_as($crate::db::sql::APPLIED_REPLAY)
                    .bind(epoch)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::db::op("applied replay"))?;
                Ok(row.map(|r| $crate::db::AppliedReplay {
                    replay_id: r.0,
                    range_from: r.1,
                    range_to: r.2,
                    applied_at_ms: r.3,
                    counts_deleted: r.4,
                    top_n_deleted: r.5,
                }))
            }
        }
    };
}

pub(crate) use impl_store;
