"""The planted evidence network (:mod:`planted_evidence_model`) returning its logits the ways real
models do: in a tuple with features, in a dict, or not at all. Load them as user models, e.g.
``--model tests/planted_outputs_model.py:as_tuple``. None of them has class labels."""

from __future__ import annotations

from planted_evidence_model import PlantedNet


class _Unlabelled(PlantedNet):
    labels = []


class TupleNet(_Unlabelled):
    """(logits, pooled features): logits first, as most repositories return them."""

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.conv3(self.pool(x)))
        pooled = x.mean(dim=(2, 3))
        return self.fc(pooled), pooled


class FeaturesFirstNet(TupleNet):
    """(feature map, logits): the logits are element 1."""

    def forward(self, x):
        logits, _ = super().forward(x)
        return self.relu3(self.conv3(self.pool(self.relu2(self.conv2(self.relu1(
            self.conv1(x))))))), logits


class DictNet(TupleNet):
    """{"embedding": ..., "logits": ...}, Hugging Face style."""

    def forward(self, x):
        logits, pooled = super().forward(x)
        return {"embedding": pooled, "logits": logits}


class ScoresNet(TupleNet):
    """{"scores": ..., "embedding": ...}: no key says which is the logits."""

    def forward(self, x):
        logits, pooled = super().forward(x)
        return {"scores": logits, "embedding": pooled}


class BackboneNet(TupleNet):
    """A backbone: returns its last feature map, no logits at all."""

    def forward(self, x):
        return self.relu3(self.conv3(self.pool(self.relu2(self.conv2(self.relu1(
            self.conv1(x)))))))


def as_tuple() -> TupleNet:
    return TupleNet()


def features_first() -> FeaturesFirstNet:
    return FeaturesFirstNet()


def as_dict() -> DictNet:
    return DictNet()


def scores() -> ScoresNet:
    return ScoresNet()


def backbone() -> BackboneNet:
    return BackboneNet()
