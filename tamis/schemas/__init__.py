"""Plain data definitions: records, the output schema, and run configuration.

Nothing here imports the rest of tamis, so any layer may use it.
"""
from .config import SelectConfig, config_error_line, parse_param_pairs, parse_target_pairs
from .output import REJECT_SCHEMA, check_name, output_schema, score_column
from .records import RecordError, content_key, escape_raw, parse_line, parse_record, parse_target, record_to_json

__all__ = [
    "SelectConfig", "config_error_line", "parse_param_pairs", "parse_target_pairs",
    "REJECT_SCHEMA", "check_name", "output_schema", "score_column",
    "RecordError", "content_key", "escape_raw", "parse_line", "parse_record", "parse_target", "record_to_json",
]
