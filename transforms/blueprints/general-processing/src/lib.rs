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

    fn process(&mut self, record: Record) -> Outcome {
        let mut data = record.data;
        if self.append_newline && data.last() != Some(&b'\n') {
            data.push(b'\n');
        }
        Outcome::ok(data)
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
