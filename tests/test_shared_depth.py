"""A module that runs several times in one forward pass (ALBERT shares its layers across depth)
is measured per call: in the activation basis each depth is its own layer, equal to an
independent recomputation from the model's hidden states; the weight basis reports each stored
layer once and says that they serve several depths."""

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from test_bad_input import tokenizer

from probes.measure.capture import Capture
from probes.run import main

LINES = [" ".join(f"w{(i * 7 + j) % 63}" for j in range(24)) for i in range(5)]  # 120 tokens


def mean_abs_cos(units: np.ndarray) -> float:
    u = units / np.linalg.norm(units, axis=1, keepdims=True)
    c = np.abs(u @ u.T)
    n = len(u)
    return float((c.sum() - np.trace(c)) / (n * (n - 1)))


@pytest.mark.parametrize("groups, depth", [(1, 4), (2, 4), (1, 3)])
def test_albert_depths_are_kept_apart(tmp_path, capsys, groups, depth):
    torch.manual_seed(0)
    model = T.AlbertModel(T.AlbertConfig(
        vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=depth,
        num_attention_heads=4, intermediate_size=64, num_hidden_groups=groups,
        max_position_embeddings=64)).eval()
    folder, out = tmp_path / "albert", tmp_path / "out"
    model.save_pretrained(folder)
    tokenizer(folder, 64)
    (tmp_path / "probe.txt").write_text("\n".join(LINES))
    capsys.readouterr()
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--probe_inputs",
                 str(tmp_path / "probe.txt"), "--num_threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "share weights across depth" in err and f"run {depth} times" in err
    assert f"hold {groups} layer(s) for num_hidden_layers={depth}" in err
    runs = pd.read_csv(out / "runs.csv")
    assert runs.n_samples[0] == 120  # tokens fed, not depth x tokens
    m = pd.read_csv(out / "metrics.csv")
    m = m[(m.metric == "mean_abs_cos") & m["head"].isna()]
    act = m[(m.basis == "activation") & (m.component == "albert_layers.0.attention.query")]
    assert sorted(act.layer) == list(range(depth))
    assert sorted(m[m.basis == "weight"].layer.unique()) == list(range(groups))
    # independent: the shared query projection applied to each depth's input hidden states
    tok = T.AutoTokenizer.from_pretrained(folder)
    per_depth = [[] for _ in range(depth)]
    with torch.no_grad():
        for line in LINES:
            ids = torch.tensor([tok(line, add_special_tokens=False)["input_ids"]])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            for d in range(depth):
                group = model.encoder.albert_layer_groups[d * groups // depth]
                per_depth[d].append(group.albert_layers[0].attention.query(hidden[d])[0])
    for d in range(depth):
        q = torch.cat(per_depth[d]).numpy().T  # (units, samples)
        got = act[act.layer == d].value.iloc[0]
        assert got == pytest.approx(mean_abs_cos(q), rel=1e-5), d


def test_capture_keeps_each_call_of_a_shared_module():
    torch.manual_seed(0)
    shared = torch.nn.Linear(6, 6)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = shared, torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.block(torch.relu(self.block(x))))

    net = Twice()
    xs = [torch.randn(4, 6), torch.randn(2, 6)]
    with Capture(net, ["block", "head"]) as cap:
        for x in xs:
            net(x)
    first = torch.cat([shared(x) for x in xs])
    second = torch.cat([shared(torch.relu(shared(x))) for x in xs])
    assert cap.repeated == {"block": 2} and "block" not in cap.outputs
    assert torch.allclose(cap.calls["block"][0], first) and torch.allclose(cap.calls["block"][1], second)
    assert cap.order == [("block", 0), ("block", 1), ("head", 0)]
    assert torch.allclose(cap.outputs["head"], torch.cat([net(x) for x in xs]))
