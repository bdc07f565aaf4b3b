"""Names written in Chinese, Korean, Cyrillic and Arabic script, which the English NER model
does not read at all.

Each rule needs what a reader of that script would take as a sign of a name, so ordinary text
is left alone:
  Chinese   a common surname (the hundred most frequent) and one or two characters, next to a
            word that marks a person: 我叫 / 名叫 / 姓名 / 联系人 / 致 before, 先生 / 女士 / 小姐 /
            老师 / 经理 / 医生 / 同学 after
  Korean    a common surname and one or two syllables, before 씨 / 님 / 고객님 / 선생님 / 대표 /
            과장 / 부장 / 팀장, or after 이름은 / 저는 / 성함
  Cyrillic  a capitalised name and a surname with a surname ending (-ов, -ева, -ин, -ский,
            -енко, …), either order, with a patronymic (-ович, -овна, …) if there is one
  both      a name written in Latin letters and in another script side by side, one in
            parentheses: "Kim Min-jun (김민준)", "赵磊 (Zhao Lei)"
  Arabic    one or two words after السيد / السيدة / الدكتور / الأستاذ / اسمي / المريض
Every expression is bounded and starts at a fixed character class, so the work is linear.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

Match = tuple[int, int, str, float]
CHINESE_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
                    "于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江"
                    "尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤欧")
_HAN = r"[\u4e00-\u9fff]"
CHINESE = re.compile(
    rf"(?:(?<=我叫)|(?<=名叫)|(?<=姓名：)|(?<=姓名:)|(?<=联系人：)|(?<=联系人:)|(?<=致))"
    rf"[{CHINESE_SURNAMES}]{_HAN}{{1,2}}"
    rf"|[{CHINESE_SURNAMES}]{_HAN}{{1,2}}(?=先生|女士|小姐|老师|经理|医生|同学|总)")
KOREAN_SURNAMES = ("김이박최정강조윤장임한오서신권황안송류전홍고문양손배백허유남심노하곽성차주우"
                   "구민진지엄채원천방공현함변염여추도소석선설마길연위표명기반왕금옥육인맹제모탁"
                   "국어은편용")
_HANGUL = r"[\uac00-\ud7a3]"
KOREAN = re.compile(
    rf"(?<![\uac00-\ud7a3])[{KOREAN_SURNAMES}]{_HANGUL}{{1,2}}"
    rf"(?=[ \t]?(?:씨|님|고객님|선생님|대표|과장|부장|팀장|사원|교수))"
    rf"|(?:(?<=이름은 )|(?<=저는 )|(?<=성함은 )|(?<=성함: ))[{KOREAN_SURNAMES}]{_HANGUL}{{1,2}}"
    rf"(?=입니다|이에요|예요|이고|이며|[^\uac00-\ud7a3]|$)")
_CYR = r"[А-ЯЁ][а-яё]+"
_CYR_SURNAME = (r"[А-ЯЁ][а-яё]*(?:ов|ова|ев|ева|ёв|ёва|ин|ина|ын|ына|ский|ская|цкий|цкая|енко|"
                r"ук|юк|ович|овна|евич|евна|ич|ян|швили|дзе)")
_PATRONYMIC = r"[А-ЯЁ][а-яё]*(?:ович|овна|евич|евна|ьич|ична)"
CYRILLIC = re.compile(  # name [patronymic] surname, or surname name [patronymic]
    rf"(?<![\w-])(?:{_CYR}(?:[ \t]+{_PATRONYMIC})?[ \t]+{_CYR_SURNAME}"
    rf"|{_CYR_SURNAME}[ \t]+{_CYR}(?:[ \t]+{_PATRONYMIC})?)(?![\w-])")
_ARABIC_WORD = r"[\u0621-\u064a]{2,}"
ARABIC = re.compile(
    rf"(?:السيد|السيدة|الدكتور|الدكتورة|الأستاذ|الأستاذة|اسمي|المريض|المريضة)[ \t]+"
    rf"(?P<v>{_ARABIC_WORD}(?:[ \t]+{_ARABIC_WORD})?)")


_OTHER = r"[\u4e00-\u9fff\uac00-\ud7a3\u0600-\u06ff\u3040-\u30ff\u0400-\u04ff]"
_LATIN_NAME = r"[A-Z][\w'\u2019-]{1,20}+(?:[ \t][A-Z][\w'\u2019-]{1,20}+){1,3}"
# A name written twice, once in each script: "Kim Min-jun (김민준)", "赵磊 (Zhao Lei)".
TRANSLITERATED = re.compile(
    rf"(?<![\w-])(?P<latin>{_LATIN_NAME})[ \t]*\((?P<other>{_OTHER}[^()\n]{{0,20}}?)\)"
    rf"|(?P<other2>{_OTHER}{{2,6}}(?:[ \t][\u0600-\u06ff]{{2,12}})?)[ \t]*"
    rf"\((?P<latin2>{_LATIN_NAME})\)")


# Each rule runs only on a text holding its script: one C-speed scan for the script is far
# cheaper than an expression tried at every character of a text without it.
HAN, HANGUL = re.compile(_HAN), re.compile(_HANGUL)
CYRILLIC_LETTER, ARABIC_LETTER = re.compile(r"[А-ЯЁа-яё]"), re.compile(r"[\u0621-\u064a]")
OTHER_SCRIPT = re.compile(_OTHER)


def names_in_other_scripts(text: str) -> Iterator[Match]:
    if text.isascii() or OTHER_SCRIPT.search(text) is None:
        return
    if "(" in text:
        for m in TRANSLITERATED.finditer(text):
            for group in ("latin", "other", "latin2", "other2"):
                if m.group(group):
                    yield m.start(group), m.end(group), "PERSON", 0.8
    for regex, script in ((CHINESE, HAN), (KOREAN, HANGUL), (CYRILLIC, CYRILLIC_LETTER)):
        if script.search(text):
            for m in regex.finditer(text):
                yield m.start(), m.end(), "PERSON", 0.8
    if ARABIC_LETTER.search(text):
        for m in ARABIC.finditer(text):
            yield m.start("v"), m.end("v"), "PERSON", 0.8
