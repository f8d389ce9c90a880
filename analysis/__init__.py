"""Analysis: turn captured pairs into summaries, statistics, reports and a gate verdict."""
