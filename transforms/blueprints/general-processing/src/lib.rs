//! Blueprint `general-processing` (Firehose's "General Firehose Processing"): passes every
//! record through unchanged. Parameter `AppendNewline` (default `false`) terminates each
//! record with `\n` unless it already ends with one.

use hosepipe_transform::{Outcome, Params, Record, Transform};

#[derive(Debug)]
pub struct GeneralProcessing {
    append_newline: bool,
}

impl Transform for GeneralProcessing {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(GeneralProcessing {
            append_newline: params.flag("AppendNewline", false)?,
        })
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        if self.append_newline && record.data.last() != Some(&b'\n') {
            let mut data = Vec::with_capacity(record.data.len() + 1);
            data.extend_from_slice(record.data);
            data.push(b'\n');
            return Outcome::ok(data);
        }
        Outcome::ok(record.data)
    }
}

hosepipe_transform::export_transform!(GeneralProcessing);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_through_and_optionally_terminates() {
        let mut plain = GeneralProcessing::init(&Params::default()).unwrap();
        assert_eq!(plain.process(Record::new("a")), Outcome::ok("a"));
        let mut nl = GeneralProcessing::init(&Params::new([("AppendNewline", "true")])).unwrap();
        assert_eq!(nl.process(Record::new("a")), Outcome::ok("a\n"));
        assert_eq!(nl.process(Record::new("a\n")), Outcome::ok("a\n"));
        assert!(GeneralProcessing::init(&Params::new([("AppendNewline", "yes")])).is_err());
    }
}
