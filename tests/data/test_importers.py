"""Real-data importers: each format from small files written here in the real layout.

Every test checks something that can fail: id mapping, stable (user, ts) order with ties, label and
completion rules, malformed rows (strict error with line number, or skipped and counted), errors naming the
file and column, and that a failed import leaves no output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from twinv2.cli import app
from twinv2.data.importers import (
    ColumnMapping,
    import_csv,
    import_kuairand,
    import_movielens,
    import_taobao,
    load_mapping,
    make_mapping,
)
from twinv2.data.importers._assemble import compact_ids, dense_codes
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError, DataValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
ML_LATEST_SMALL = REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _events(out: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(out / "events.parquet")
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _raw_users(out: Path) -> list[str]:
    return pq.read_table(out / "users.parquet").column("raw_user_id").to_pylist()


def _items(out: Path) -> dict[str, list]:
    return pq.read_table(out / "items.parquet").to_pydict()


def _vocab(out: Path) -> dict[str, list[str]]:
    return json.loads((out / "vocabularies.json").read_text())


def _raw_item_of(out: Path) -> dict[int, str]:
    items = _items(out)
    return dict(zip(items["item_id"], items["raw_item_id"], strict=True))


# ---- MovieLens ------------------------------------------------------------------------------------------

ML_RATINGS = """userId,movieId,rating,timestamp
10,30,5.0,300
2,20,3.5,200
10,10,4.0,100
2,10,4.5,200
2,30,1.0,50
10,20,2.0,100
"""
ML_MOVIES = """movieId,title,genres
10,"Heat, The (1995)",Action|Crime|Thriller
20,Toy Story (1995),Animation|Children|Comedy
30,Odd One (2001),(no genres listed)
40,Unrated (1999),Drama
"""


def test_import_movielens_csv_layout_maps_ids_sorts_stably_and_labels(tmp_path):
    src = tmp_path / "ml"
    _write(src / "ratings.csv", ML_RATINGS)
    _write(src / "movies.csv", ML_MOVIES)
    report = import_movielens(src, tmp_path / "out")
    out = tmp_path / "out"
    assert (report.num_events, report.num_users, report.num_items) == (6, 2, 3)
    assert _raw_users(out) == ["2", "10"]  # numeric order of raw ids, not text order
    ev = _events(out)
    raw_item = _raw_item_of(out)
    assert ev["user_id"].tolist() == [0, 0, 0, 1, 1, 1]
    assert ev["ts"].tolist() == [50, 200, 200, 100, 100, 300]
    # ties keep input order: user 2 rated 20 then 10 at ts 200; user 10 rated 10 then 20 at ts 100
    assert [raw_item[i] for i in ev["item_id"]] == ["30", "20", "10", "10", "20", "30"]
    assert ev["rating"].tolist() == [1.0, 3.5, 4.5, 4.0, 2.0, 5.0]
    assert ev["label"].tolist() == [0, 0, 1, 1, 0, 1]
    np.testing.assert_allclose(ev["completion_ratio"], ev["rating"] / 5, rtol=1e-6)
    np.testing.assert_allclose(ev["play_time"], ev["completion_ratio"])
    items = _items(out)
    vocab = _vocab(out)
    genre = {raw: vocab["category_id"][c] for raw, c in zip(items["raw_item_id"], items["category_id"], strict=True)}
    genre2 = {raw: vocab["genre2_id"][c] for raw, c in zip(items["raw_item_id"], items["genre2_id"], strict=True)}
    assert genre == {"10": "Action", "20": "Animation", "30": "<unknown>"}
    assert genre2 == {"10": "Crime", "20": "Children", "30": "<unknown>"}
    assert set(items["duration"]) == {1.0}
    assert any("1 items of" in w and "no events" in w for w in report.warnings)  # movie 40
    ds = load_dataset(out)
    assert ds.manifest.num_events == 6 and ds.manifest.notes["import"]["label_rule"] == "1 if rating >= 4 else 0"


def test_import_movielens_100k_layout_reads_tab_and_pipe_files(tmp_path):
    src = tmp_path / "ml-100k"
    _write(src / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250949\n")
    flags = ["0"] * 19
    crime_drama = list(flags)
    crime_drama[6] = crime_drama[8] = "1"  # Crime, Drama
    unknown = list(flags)
    unknown[0] = "1"
    _write(src / "u.item",
           "242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(crime_drama) + "\n"
           "302|Café Noir (1997)|01-Jan-1997||http://y|" + "|".join(unknown) + "\n", encoding="latin-1")
    out = tmp_path / "out"
    report = import_movielens(src, out)
    assert report.layout == "100k" and (report.num_events, report.num_users, report.num_items) == (3, 2, 2)
    assert _raw_users(out) == ["186", "196"]
    ev = _events(out)
    raw_item = _raw_item_of(out)
    assert [raw_item[i] for i in ev["item_id"]] == ["302", "242", "302"]  # user 196's tie keeps file order
    assert ev["label"].tolist() == [0, 0, 1]
    items, vocab = _items(out), _vocab(out)
    assert [vocab["category_id"][c] for c in items["category_id"]] == ["Crime", "<unknown>"]
    assert [vocab["genre2_id"][c] for c in items["genre2_id"]] == ["Drama", "<unknown>"]


def test_import_movielens_1m_layout_reads_double_colon_latin1(tmp_path):
    src = tmp_path / "ml-1m"
    _write(src / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    _write(src / "movies.dat", '1193::One Flew Over: "Nest" (1975)::Drama\n661::Pokémon: Le Film (1996)::'
           "Animation|Children's|Musical\n", encoding="latin-1")
    out = tmp_path / "out"
    report = import_movielens(src, out)
    assert report.layout == "1m" and (report.num_events, report.num_users, report.num_items) == (3, 2, 2)
    ev = _events(out)
    assert ev["ts"].tolist() == [978300760, 978302109, 978298413]
    items, vocab = _items(out), _vocab(out)
    genres = {r: vocab["category_id"][c] for r, c in zip(items["raw_item_id"], items["category_id"], strict=True)}
    assert genres == {"661": "Animation", "1193": "Drama"}


def test_import_movielens_1m_malformed_line_is_named_and_skippable(tmp_path):
    src = tmp_path / "ml-1m"
    _write(src / "ratings.dat", "1::1193::5::978300760\n1::661::3\n2::1193::4::978298413\n")
    with pytest.raises(DataValidationError, match=r"ratings\.dat: expected 4 fields per line.*3 fields at line 2"):
        import_movielens(src, tmp_path / "out")
    report = import_movielens(src, tmp_path / "out", skip_bad_rows=True)
    assert (report.num_events, report.skipped_rows) == (2, 1)
    assert report.warnings == ["no movies.dat in " + str(src) + ": genres are 0 (unknown)"]


def test_import_movielens_malformed_row_strict_names_line_and_skip_counts(tmp_path):
    src = tmp_path / "ml"
    _write(src / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n1,20,3.0\n2,10,5.0,7\n")
    with pytest.raises(DataValidationError, match=r"ratings\.csv.*4 fields.*line 3") as exc:
        import_movielens(src, tmp_path / "out")
    assert "1,20,3.0" in str(exc.value)
    assert not (tmp_path / "out").exists()
    report = import_movielens(src, tmp_path / "out", skip_bad_rows=True)
    assert report.num_events == 2 and report.skipped_rows == 1


def test_import_movielens_bad_rating_names_column_value_and_line_after_skipped_row(tmp_path):
    src = tmp_path / "ml"
    _write(src / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5,extra\n\n1,20,9.0,6\n")
    with pytest.raises(DataValidationError) as exc:
        import_movielens(src, tmp_path / "out", skip_bad_rows=False)
    assert "4 fields" in str(exc.value)  # the malformed line 2 comes first
    with pytest.raises(DataValidationError) as exc:
        import_movielens(src, tmp_path / "out", skip_bad_rows=True)  # everything dropped -> no events
    assert "at least one event" in str(exc.value)
    _write(src / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n\n1,20,9.0,6\n")
    with pytest.raises(DataValidationError) as exc:
        import_movielens(src, tmp_path / "out")
    msg = str(exc.value)
    assert "column 'rating'" in msg and "[0.5, 5]" in msg and "'9.0' at line 4" in msg
    assert not (tmp_path / "out").exists()


def test_import_movielens_duplicate_movie_id_is_an_error_even_when_skipping(tmp_path):
    src = tmp_path / "ml"
    _write(src / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
    _write(src / "movies.csv", "movieId,title,genres\n10,A,Drama\n11,B,Drama\n10,C,Comedy\n")
    for skip in (False, True):
        with pytest.raises(DataValidationError, match=r"movies\.csv: column 'movieId': expected unique item ids"
                           r".*'10' at line 2 and line 4"):
            import_movielens(src, tmp_path / "out", skip_bad_rows=skip)
    assert not (tmp_path / "out").exists()


def test_import_movielens_unknown_folder_is_an_error(tmp_path):
    with pytest.raises(DataValidationError, match=r"ratings\.csv"):
        import_movielens(tmp_path, tmp_path / "out")


# ---- Taobao ---------------------------------------------------------------------------------------------

TAOBAO = """7,100,5,pv,1511544070
1,200,9,buy,1511600000
7,300,5,cart,1511544070
1,100,6,fav,1511500000
7,100,5,pv,1511544000
"""


def test_import_taobao_labels_completion_levels_and_first_category(tmp_path):
    path = _write(tmp_path / "UserBehavior.csv", TAOBAO)
    out = tmp_path / "out"
    report = import_taobao(tmp_path, out)
    assert (report.num_events, report.num_users, report.num_items) == (5, 2, 3)
    assert _raw_users(out) == ["1", "7"]
    ev = _events(out)
    raw_item = _raw_item_of(out)
    assert ev["user_id"].tolist() == [0, 0, 1, 1, 1]
    assert [raw_item[i] for i in ev["item_id"]] == ["100", "200", "100", "100", "300"]  # tie: pv 100 before cart
    assert ev["label"].tolist() == [1, 1, 0, 0, 1]
    assert ev["completion_ratio"].tolist() == [0.5, 1.0, 0.25, 0.25, 0.75]
    items, vocab = _items(out), _vocab(out)
    category = {r: vocab["category_id"][c] for r, c in zip(items["raw_item_id"], items["category_id"], strict=True)}
    assert category == {"100": "5", "200": "9", "300": "5"}  # item 100's first row (file order) says 5
    assert any("more than one category_id" in w for w in report.warnings)
    # a file path works as well as its folder, and the positive behaviors are configurable
    report = import_taobao(path, out, positive_behaviors=["buy"], overwrite=True)
    assert _events(out)["label"].tolist() == [0, 1, 0, 0, 0]


def test_import_taobao_unknown_behavior_names_field_and_value(tmp_path):
    _write(tmp_path / "UserBehavior.csv", TAOBAO + "1,100,6,click,1511500001\n")
    with pytest.raises(DataValidationError) as exc:
        import_taobao(tmp_path, tmp_path / "out")
    msg = str(exc.value)
    assert "column 'behavior_type (field 4)'" in msg and "'click' at line 6" in msg and "pv, fav, cart, buy" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="click"):
        import_taobao(tmp_path, tmp_path / "out", positive_behaviors=["click"])


def test_import_taobao_skip_bad_rows_drops_and_counts_by_reason(tmp_path):
    _write(tmp_path / "UserBehavior.csv", TAOBAO + "1,100,6,pv,-5\n,100,6,pv,1511500002\n1,100,6,pv\n")
    report = import_taobao(tmp_path, tmp_path / "out", skip_bad_rows=True)
    assert report.num_events == 5 and report.skipped_rows == 3
    reasons = " ".join(report.bad_rows["by_reason"])
    assert "timestamp" in reasons and "user_id" in reasons and "5 fields per line" in reasons
    notes = load_dataset(tmp_path / "out").manifest.notes["import"]
    assert notes["bad_rows"]["total"] == 3


# ---- KuaiRand -------------------------------------------------------------------------------------------

KR_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
             "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n")


def _kr_row(user, video, time_ms, click, play_ms, duration_ms, is_rand=0):
    return f"{user},{video},20220408,1000,{time_ms},{click},0,0,0,0,0,0,{play_ms},{duration_ms},0,0,0,{is_rand},1\n"


def test_import_kuairand_folder_converts_ms_completion_and_features(tmp_path):
    data = tmp_path / "data"
    _write(data / "log_random_4_22_to_5_08_1k.csv", KR_HEADER + _kr_row(0, 5, 1_649_400_000_500, 0, 0, 10_000, 1))
    _write(data / "log_standard_4_08_to_4_21_1k.csv", KR_HEADER
           + _kr_row(0, 7, 1_649_400_000_900, 1, 15_000, 10_000)     # same second as the random row: tie
           + _kr_row(3, 5, 1_649_300_000_000, 1, 2_500, 10_000)
           + _kr_row(0, 9, 1_649_300_000_000, 0, 700, 0))            # zero duration -> completion 0
    _write(data / "video_features_basic_1k.csv",
           'video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,'
           'server_height,music_id,music_type,tag\n'
           '5,77,NORMAL,2022-01-01,ShortImport,1,10000,720,1280,0,0,"11,3"\n'
           '7,78,NORMAL,2022-01-01,ShortImport,1,10000,720,1280,0,0,2\n'
           '8,79,NORMAL,2022-01-01,ShortImport,1,10000,720,1280,0,0,\n')
    out = tmp_path / "out"
    report = import_kuairand(data, out)
    assert (report.num_events, report.num_users, report.num_items) == (4, 2, 3)
    ev = _events(out)
    raw_item = _raw_item_of(out)
    assert ev["ts"].tolist() == [1_649_300_000, 1_649_400_000, 1_649_400_000, 1_649_300_000]
    # files are read in name order (log_random first), so the tie keeps video 5 before video 7
    assert [raw_item[i] for i in ev["item_id"]] == ["9", "5", "7", "5"]
    assert ev["label"].tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(ev["completion_ratio"], [0.0, 0.0, 1.0, 0.25])
    np.testing.assert_allclose(ev["play_time"], [0.7, 0.0, 15.0, 2.5], rtol=1e-6)
    items, vocab = _items(out), _vocab(out)
    by_raw = {r: i for i, r in enumerate(items["raw_item_id"])}
    assert items["duration"][by_raw["5"]] == 10.0 and items["duration"][by_raw["9"]] == 0.0
    assert vocab["category_id"][items["category_id"][by_raw["5"]]] == "11"
    assert vocab["author_id"][items["author_id"][by_raw["7"]]] == "78"
    assert items["author_id"][by_raw["9"]] == 0  # no feature row -> unknown
    assert any("duration_ms = 0" in w for w in report.warnings)
    assert any("no entry" in w for w in report.warnings) and any("no events" in w for w in report.warnings)
    report = import_kuairand(data, out, include_random=False, overwrite=True)
    raw_item = _raw_item_of(out)
    assert [raw_item[i] for i in _events(out)["item_id"]] == ["9", "7", "5"]  # the random row is gone
    assert load_dataset(out).manifest.notes["import"]["random_exposures_dropped"] == 1


def test_import_kuairand_missing_column_names_it_and_writes_nothing(tmp_path):
    bad = KR_HEADER.replace("play_time_ms,", "")
    path = _write(tmp_path / "log_standard_x.csv", bad + "0,5,20220408,1000,1649400000500,0,0,0,0,0,0,0,10,0,0,0,0,1\n")
    with pytest.raises(DataValidationError, match=r"log_standard_x\.csv: column 'play_time_ms'.*no such column"):
        import_kuairand(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_kuairand_malformed_row_strict_or_skipped(tmp_path):
    path = _write(tmp_path / "log.csv", KR_HEADER + _kr_row(0, 5, 1_649_400_000_500, 0, 3, 10_000)
                  + "0,6,20220408,1000\n" + _kr_row(1, 5, 1_649_400_000_000, 1, 3, 10_000))
    with pytest.raises(DataValidationError, match=r"log\.csv: expected 19 fields per line.*4 fields at line 3"):
        import_kuairand(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = import_kuairand(path, tmp_path / "out", skip_bad_rows=True)
    assert (report.num_events, report.skipped_rows) == (2, 1)


def test_import_kuairand_negative_play_time_is_an_error(tmp_path):
    path = _write(tmp_path / "log.csv", KR_HEADER + _kr_row(0, 5, 1_649_400_000_500, 0, -3, 10_000))
    with pytest.raises(DataValidationError, match=r"column 'play_time_ms'.*non-negative.*'-3' at line 2"):
        import_kuairand(path, tmp_path / "out")


# ---- generic CSV / Parquet --------------------------------------------------------------------------------

def _mapping(**kw) -> ColumnMapping:
    base = {"user_col": "uid", "item_col": "iid", "ts_col": "t", "label_col": "y"}
    return make_mapping(None, {**base, **kw})


def test_import_csv_iso_times_text_ids_play_duration_and_extras(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y,watch,length,topic,pos\n"
                  "bob,x1,2020-01-01T00:00:10,1,30,60,news,1\n"
                  "alice,x2,2020-01-01 00:00:05+00:00,0,90,60,sport,2\n"
                  "bob,x2,2020-01-01T00:00:10Z,0,0,0,,3\n"
                  "alice,x1,2019-12-31T23:00:00-01:00,1,15,60,sport,4\n")
    mapping = _mapping(ts_unit="iso", play_time_col="watch", duration_col="length", category_col="topic",
                       cross_numeric_cols=["pos"])
    out = tmp_path / "out"
    report = import_csv(path, out, mapping)
    assert (report.num_events, report.num_users, report.num_items) == (4, 2, 2)
    assert _raw_users(out) == ["alice", "bob"]  # text order for non-numeric ids
    ev = _events(out)
    assert ev["ts"].tolist() == [1577836800, 1577836805, 1577836810, 1577836810]
    assert ev["pos"].tolist() == [4, 2, 1, 3]  # bob's tie keeps file order
    np.testing.assert_allclose(ev["completion_ratio"], [0.25, 1.0, 0.5, 0.0])  # clipped; 0 for duration 0
    np.testing.assert_allclose(ev["play_time"], [15, 90, 30, 0])
    items, vocab = _items(out), _vocab(out)
    topics = {r: vocab["category_id"][c] for r, c in zip(items["raw_item_id"], items["category_id"], strict=True)}
    assert topics == {"x1": "news", "x2": "sport"}  # first event in file order
    assert items["duration"] == [60.0, 60.0]


def test_import_csv_label_threshold_and_no_play_time_uses_label_as_completion(tmp_path):
    path = _write(tmp_path / "ev.tsv", "uid\tiid\tt\ty\n1\t1\t5\t4.5\n1\t2\t6\t2\n")
    out = tmp_path / "out"
    import_csv(path, out, _mapping(label_threshold=4))
    ev = _events(out)
    assert ev["label"].tolist() == [1, 0]
    assert ev["completion_ratio"].tolist() == [1.0, 0.0] and ev["play_time"].tolist() == [1.0, 0.0]


def test_import_csv_parquet_with_native_types(tmp_path):
    path = tmp_path / "ev.parquet"
    pq.write_table(pa.table({
        "uid": pa.array([3, 1, 3], pa.int64()),
        "iid": pa.array([10.0, 20.0, 10.0]),  # integer ids stored as float, as pandas does
        "t": pa.array([1_000, 500, 1_000], pa.timestamp("ms")),
        "y": pa.array([True, False, True]),
    }), path)
    out = tmp_path / "out"
    report = import_csv(path, out, _mapping())
    assert report.layout == "parquet" and report.num_events == 3
    assert _raw_users(out) == ["1", "3"] and sorted(_items(out)["raw_item_id"]) == ["10", "20"]
    assert _events(out)["ts"].tolist() == [0, 1, 1]
    pq.write_table(pa.table({"uid": pa.array([1, None]), "iid": [1, 2], "t": [1, 2], "y": [0, 1]}), path)
    with pytest.raises(DataValidationError, match=r"column 'uid'.*non-empty id.*row 2"):
        import_csv(path, tmp_path / "out2", _mapping())


def test_import_csv_missing_column_names_it_and_leaves_no_folder(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,y\n1,2,1\n")
    out = tmp_path / "out"
    with pytest.raises(DataValidationError) as exc:
        import_csv(path, out, _mapping())
    assert "ev.csv" in str(exc.value) and "column 't'" in str(exc.value) and "no such column" in str(exc.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_import_csv_non_numeric_timestamp_names_column_value_and_line(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n1,2,100,1\n1,3,yesterday,0\n")
    out = tmp_path / "out"
    with pytest.raises(DataValidationError) as exc:
        import_csv(path, out, _mapping())
    msg = str(exc.value)
    assert "column 't'" in msg and "integer seconds" in msg and "'yesterday' at line 3" in msg
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
    _write(path, "uid,iid,t,y\n1,2,2020-01-01,1\n")
    with pytest.raises(DataValidationError, match="iso"):  # a date with the seconds unit suggests 'iso'
        import_csv(path, out, _mapping())


@pytest.mark.parametrize(("body", "column", "found"), [
    ("1,2,100,1\nnan,3,101,0\n", "uid", "'nan' at line 3"),
    ("1,2,100,1\n1,,101,0\n", "iid", "an empty value at line 3"),
    ("1,2,100,1\n1,3,,0\n", "t", "an empty value at line 3"),
    ("1,2,100,1\n1,3,101,2\n", "y", "'2' at line 3"),
    ("1,2,100,1\n1,3,101,0.5\n", "y", "'0.5' at line 3"),
    ("1,2,100,1\n1,3,-4,0\n", "t", "'-4' at line 3"),
])
def test_import_csv_bad_values_name_column_and_line(tmp_path, body, column, found):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n" + body)
    with pytest.raises(DataValidationError) as exc:
        import_csv(path, tmp_path / "out", _mapping())
    assert f"column '{column}'" in str(exc.value) and found in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_import_csv_decimal_and_millisecond_timestamps(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n1,2,1500.9,1\n1,3,1501,0\n")
    import_csv(path, tmp_path / "a", _mapping())
    assert _events(tmp_path / "a")["ts"].tolist() == [1500, 1501]
    import_csv(path, tmp_path / "b", _mapping(ts_unit="ms"))
    assert _events(tmp_path / "b")["ts"].tolist() == [1, 1]


def test_load_mapping_is_strict_and_options_override(tmp_path):
    good = _write(tmp_path / "m.yaml", "user_col: uid\nitem_col: iid\nts_col: t\nlabel_col: y\nts_unit: ms\n"
                  "cross_numeric_cols: [pos]\n")
    mapping = make_mapping(load_mapping(good), {"ts_unit": "s", "label_col": None})
    assert mapping.ts_unit == "s" and mapping.label_col == "y" and mapping.cross_numeric_cols == ("pos",)
    typo = _write(tmp_path / "typo.yaml", "user_col: uid\nitem_column: iid\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'item_column'"):
        load_mapping(typo)
    wrong = _write(tmp_path / "wrong.yaml", "user_col: [a, b]\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: key 'user_col'"):
        load_mapping(wrong)
    with pytest.raises(ConfigError, match="ts_unit"):
        load_mapping(_write(tmp_path / "unit.yaml", "ts_unit: days\n"))
    with pytest.raises(ConfigError, match="missing label_col"):
        make_mapping({"user_col": "u", "item_col": "i", "ts_col": "t"})
    with pytest.raises(ConfigError, match="play_time_col needs duration_col"):
        _mapping(play_time_col="watch")
    with pytest.raises(ConfigError, match="reserved"):
        _mapping(cross_numeric_cols=["label"])


def test_import_refuses_existing_or_foreign_output(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n1,2,100,1\n")
    out = tmp_path / "out"
    import_csv(path, out, _mapping())
    with pytest.raises(FileExistsError, match="overwrite"):
        import_csv(path, out, _mapping())
    import_csv(path, out, _mapping(), overwrite=True)
    foreign = tmp_path / "home"
    _write(foreign / "precious.txt", "keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        import_csv(path, foreign, _mapping(), overwrite=True)
    assert (foreign / "precious.txt").exists()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=40))
def test_import_csv_order_is_a_stable_sort_of_the_input(tmp_path_factory, rows):
    # Invariant: output rows = input rows sorted by (user, ts) with ties in input order (Python's sort is
    # stable), users and items numbered in sorted raw-id order.
    tmp = tmp_path_factory.mktemp("stable")
    lines = [f"{u},{i},{t},{k % 2},{k}" for k, (u, i, t) in enumerate(rows)]
    path = _write(tmp / "ev.csv", "uid,iid,t,y,row\n" + "\n".join(lines) + "\n")
    import_csv(path, tmp / "out", _mapping(cross_numeric_cols=["row"]))
    expected = sorted(range(len(rows)), key=lambda k: (rows[k][0], rows[k][2]))
    ev = _events(tmp / "out")
    assert ev["row"].astype(int).tolist() == expected
    users = sorted({u for u, _, _ in rows})
    assert [users[u] for u in ev["user_id"]] == [rows[k][0] for k in expected]


def test_dense_codes_sorted_ids_first_positions_and_mixed_chunks():
    # one non-integer id ("x") switches the whole column to text order; 7 and "7" are the same id
    coded = dense_codes([np.array([30, 7, 30], np.int64), pa.array(["007", "7", "x"])])
    assert coded.raw.to_pylist() == ["007", "30", "7", "x"]
    assert coded.codes.tolist() == [1, 2, 1, 0, 2, 3]
    assert coded.first.tolist() == [3, 0, 1, 5]
    # all integers: numeric order, the text breaking the tie between "9" and "009"
    assert dense_codes([pa.array(["10", "9", "009"])]).raw.to_pylist() == ["009", "9", "10"]
    assert isinstance(compact_ids(pa.array(["1", "22"])), np.ndarray)
    assert not isinstance(compact_ids(pa.array(["1", "022"])), np.ndarray)  # not canonical: kept as text


def test_import_csv_failed_overwrite_keeps_previous_dataset(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n1,2,100,1\n")
    out = tmp_path / "out"
    import_csv(path, out, _mapping())
    _write(path, "uid,iid,t,y\n1,2,100,1\n1,3,later,0\n")
    with pytest.raises(DataValidationError):
        import_csv(path, out, _mapping(), overwrite=True)
    assert load_dataset(out).manifest.num_events == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.csv", "out"]  # no temporary folder left


# ---- command line ------------------------------------------------------------------------------------------

def test_cli_import_csv_missing_column_and_bad_timestamp_exit_nonzero(tmp_path):
    runner = CliRunner()
    missing = _write(tmp_path / "missing.csv", "uid,iid,y\n1,2,1\n")
    garbage = _write(tmp_path / "garbage.csv", "uid,iid,t,y\n1,2,soon,1\n")
    for path, needle in ((missing, "column 't'"), (garbage, "'soon' at line 2")):
        out = tmp_path / f"out_{path.stem}"
        result = runner.invoke(app, ["data", "import", "csv", str(path), "--out", str(out), "--user-col", "uid",
                                     "--item-col", "iid", "--ts-col", "t", "--label-col", "y"])
        assert result.exit_code != 0
        output = " ".join(result.output.split())  # undo the console's line wrapping
        assert needle in output and "Traceback" not in output
        assert not out.exists()


def test_cli_import_csv_with_mapping_file_and_skip_bad_rows(tmp_path):
    path = _write(tmp_path / "ev.csv", "uid,iid,t,y\n1,2,100,1\n1,3,oops,0\n")
    mapping = _write(tmp_path / "m.yaml", "user_col: uid\nitem_col: iid\nts_col: t\nlabel_col: y\n")
    result = CliRunner().invoke(app, ["data", "import", "csv", str(path), "--out", str(tmp_path / "out"),
                                      "--mapping", str(mapping), "--skip-bad-rows"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "1 events" in output and "skipped 1" in output
    typo = _write(tmp_path / "typo.yaml", "user: uid\n")
    result = CliRunner().invoke(app, ["data", "import", "csv", str(path), "--out", str(tmp_path / "o2"),
                                      "--mapping", str(typo)])
    assert result.exit_code != 0 and "unknown key 'user'" in " ".join(result.output.split())


def test_cli_import_commands_have_help():
    runner = CliRunner()
    for fmt in ("movielens", "taobao", "kuairand", "csv"):
        result = runner.invoke(app, ["data", "import", fmt, "--help"])
        assert result.exit_code == 0 and "--out" in result.output


@pytest.mark.skipif(not ML_LATEST_SMALL.is_dir(), reason="../shared/data/ml-latest-small is not present")
def test_cli_import_movielens_latest_small_gives_100836_events_610_users(tmp_path):
    out = tmp_path / "ml"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "import", "movielens", str(ML_LATEST_SMALL), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert (ds.manifest.num_events, ds.manifest.num_users) == (100836, 610)
    assert ds.manifest.num_items == 9724
    assert 0.4 < ds.histories.label.mean() < 0.6
    for u in range(ds.histories.num_users):  # each history is time-ordered
        lo, hi = ds.histories.offsets[u], ds.histories.offsets[u + 1]
        assert (np.diff(ds.histories.ts[lo:hi]) >= 0).all()
    described = runner.invoke(app, ["data", "describe", str(out), "--json"])
    assert described.exit_code == 0, described.output
    summary = json.loads(described.stdout)
    assert (summary["events"], summary["users"]) == (100836, 610)
