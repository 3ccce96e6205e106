//! Generated partition ranges (`partition_range`), so plans expand offline.

use super::schema::PartitionRange;

/// Expands a range into partition ids, or explains what is wrong with it.
pub fn expand_range(range: &PartitionRange) -> Result<Vec<String>, String> {
    const LIMIT: usize = 100_000;
    match range.step.as_str() {
        "month" => {
            let (fy, fm) = parse_month(&range.from)?;
            let (ty, tm) = parse_month(&range.to)?;
            let (mut y, mut m) = (fy, fm);
            let mut out = Vec::new();
            while (y, m) <= (ty, tm) {
                out.push(format!("{y:04}{m:02}"));
                if out.len() > LIMIT {
                    return Err(format!("the range has more than {LIMIT} partitions"));
                }
                m += 1;
                if m == 13 {
                    m = 1;
                    y += 1;
                }
            }
            non_empty(out)
        }
        "day" => {
            let from = parse_day(&range.from)?;
            let to = parse_day(&range.to)?;
            let mut out = Vec::new();
            let mut d = from;
            while d <= to {
                out.push(d.format("%Y%m%d").to_string());
                if out.len() > LIMIT {
                    return Err(format!("the range has more than {LIMIT} partitions"));
                }
                d = d.succ_opt().ok_or("date out of range")?;
            }
            non_empty(out)
        }
        "integer" => {
            let from = range.from.as_integer().ok_or("`from` must be an integer")?;
            let to = range.to.as_integer().ok_or("`to` must be an integer")?;
            if to.saturating_sub(from) >= LIMIT as i64 {
                return Err(format!("the range has more than {LIMIT} partitions"));
            }
            non_empty((from..=to).map(|i| i.to_string()).collect())
        }
        other => Err(format!(
            "unknown step \"{other}\"; use \"month\", \"day\" or \"integer\""
        )),
    }
}

fn non_empty(ids: Vec<String>) -> Result<Vec<String>, String> {
    if ids.is_empty() {
        Err("`from` is after `to`: the range is empty".into())
    } else {
        Ok(ids)
    }
}

fn parse_month(v: &toml::Value) -> Result<(i32, u32), String> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        _ => return Err("a month is written \"2015-06\" or 201506".into()),
    };
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() != 6 {
        return Err(format!(
            "`{text}` is not a month; write \"2015-06\" or 201506"
        ));
    }
    let y: i32 = digits[..4]
        .parse()
        .map_err(|_| format!("bad year in `{text}`"))?;
    let m: u32 = digits[4..]
        .parse()
        .map_err(|_| format!("bad month in `{text}`"))?;
    if !(1..=12).contains(&m) {
        return Err(format!("`{text}`: month must be 01–12"));
    }
    Ok((y, m))
}

fn parse_day(v: &toml::Value) -> Result<chrono::NaiveDate, String> {
    let text = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Integer(i) => i.to_string(),
        _ => return Err("a day is written \"2015-06-01\" or 20150601".into()),
    };
    chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(&text, "%Y%m%d"))
        .map_err(|_| format!("`{text}` is not a day; write \"2015-06-01\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: &str, to: &str, step: &str) -> PartitionRange {
        PartitionRange {
            from: toml::Value::String(from.into()),
            to: toml::Value::String(to.into()),
            step: step.into(),
        }
    }

    #[test]
    fn months_cross_years() {
        assert_eq!(
            expand_range(&range("2015-11", "2016-02", "month")).unwrap(),
            vec!["201511", "201512", "201601", "201602"]
        );
    }

    #[test]
    fn days_and_errors() {
        assert_eq!(
            expand_range(&range("2016-02-28", "2016-03-01", "day")).unwrap(),
            vec!["20160228", "20160229", "20160301"]
        );
        assert!(expand_range(&range("2016-03", "2016-01", "month")).is_err());
        assert!(expand_range(&range("2016-13", "2016-14", "month")).is_err());
        assert!(expand_range(&range("1", "2", "week")).is_err());
    }
}
