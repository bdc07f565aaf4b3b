"""Names in Chinese, Korean, Cyrillic and Arabic script, through the pattern tier."""

from __future__ import annotations

import pytest

from tests.unit.privacy.findings import found


@pytest.mark.parametrize(("text", "names"), [
    ("你好，我叫王伟，请联系张丽华女士。国王很高兴。", ["王伟", "张丽华"]),
    ("안녕하세요, 저는 김민준입니다. 박서연 님께 전달해 주세요.", ["김민준", "박서연"]),
    ("Клиент Иван Петров и Мария Ивановна Смирнова приехали в Москву.",
     ["Иван Петров", "Мария Ивановна Смирнова"]),
    ("السيد محمد العلي يريد موعدا", ["محمد العلي"]),
    ("Name: Kim Min-jun (김민준), team lead", ["Kim Min-jun", "김민준"]),
    ("联系人 赵磊 (Zhao Lei) 会来", ["赵磊", "Zhao Lei"]),
    ("Встреча в Санкт-Петербурге завтра. 今天天气很好。 이것은 문장입니다.", []),
])
def test_names_in_other_scripts(text: str, names: list[str]) -> None:
    assert [v for v, e in found(text) if e == "PERSON"] == names
