"""The checked-in gRPC code matches classifier.proto (regenerate with `make proto`)."""

from cifarflow.serving.gateway.proto import generate


def test_generated_code_is_up_to_date(tmp_path, capsys):
    assert generate.main(["--check"]) == 0, capsys.readouterr().err
    fresh = generate.generate(tmp_path)
    assert set(fresh) == set(generate.GENERATED)
    assert b"class ClassifierStub" in fresh["classifier_pb2_grpc.py"]


def test_check_notices_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "proto"
    stale.mkdir()
    for name in generate.GENERATED:
        (stale / name).write_bytes(b"# old\n")
    monkeypatch.setattr(generate, "HERE", stale)
    monkeypatch.setattr(
        generate, "PROTO", generate.Path(generate.__file__).with_name("classifier.proto")
    )
    assert generate.main(["--check"]) == 1
    assert "make proto" in capsys.readouterr().err
