"""The pipeline benchmark's deterministic workload: a product catalogue (English and Chinese), users, events.

Everything is a pure function of the sizes and a seed, so two runs (and the naive run beside the batched one)
see the same texts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BASE_TS = 1_767_225_600  # 2026-01-01T00:00:00Z

# category -> (English nouns, Chinese nouns)
CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "phones": (["smartphone", "phone case", "screen protector", "wireless charger", "phone holder"],
               ["智能手机", "手机壳", "钢化膜", "无线充电器", "手机支架"]),
    "audio": (["wireless earbuds", "bluetooth speaker", "over-ear headphones", "soundbar", "microphone"],
              ["蓝牙耳机", "蓝牙音箱", "头戴式耳机", "回音壁", "麦克风"]),
    "kitchen": (["air fryer", "coffee grinder", "rice cooker", "blender", "kettle"],
                ["空气炸锅", "咖啡研磨机", "电饭煲", "破壁机", "电水壶"]),
    "sports": (["running shoes", "yoga mat", "dumbbell set", "cycling jersey", "tennis racket"],
               ["跑步鞋", "瑜伽垫", "哑铃套装", "骑行服", "网球拍"]),
    "home": (["desk lamp", "memory foam pillow", "storage box", "blackout curtains", "bath towel"],
             ["台灯", "记忆棉枕头", "收纳箱", "遮光窗帘", "浴巾"]),
    "computers": (["mechanical keyboard", "gaming mouse", "laptop stand", "USB-C hub", "monitor"],
                  ["机械键盘", "游戏鼠标", "笔记本支架", "扩展坞", "显示器"]),
    "beauty": (["face moisturiser", "sunscreen", "hair dryer", "electric toothbrush", "lipstick"],
               ["保湿面霜", "防晒霜", "吹风机", "电动牙刷", "口红"]),
    "outdoor": (["camping tent", "hiking backpack", "sleeping bag", "trekking poles", "headlamp"],
                ["帐篷", "登山包", "睡袋", "登山杖", "头灯"]),
    "toys": (["building blocks", "remote control car", "plush bear", "puzzle", "board game"],
             ["积木", "遥控车", "毛绒熊", "拼图", "桌游"]),
    "books": (["science fiction novel", "cookbook", "travel guide", "children's picture book", "history book"],
              ["科幻小说", "菜谱", "旅行指南", "儿童绘本", "历史书"]),
}
BRANDS_EN = ["Acme", "Northwind", "Contoso", "Fabrikam", "Aurora", "Zenith", "Orbit", "Summit", "Nimbus", "Vertex",
             "Lumen", "Harbor", "Pioneer", "Cedar", "Atlas", "Nova"]
BRANDS_ZH = ["华为", "小米", "联想", "海尔", "美的", "格力", "安踏", "李宁", "九阳", "苏泊尔", "得力", "罗马仕"]
ADJ_EN = ["black", "lightweight", "waterproof", "stainless steel", "compact", "ergonomic", "2-pack",
          "noise cancelling", "portable", "premium", "foldable", "rechargeable", "white", "large", "kids'"]
ADJ_ZH = ["黑色", "轻便", "防水", "不锈钢", "迷你", "人体工学", "两件装", "降噪", "便携", "高端", "可折叠", "充电式"]
REVIEW_EN = [
    "Really happy with this {noun}, it works exactly as described and feels well made.",
    "The {noun} arrived quickly but the quality is worse than I expected for the price.",
    "I use the {noun} every day and after a month it still looks and works like new.",
    "Great value {noun}; my partner liked it so much we ordered a second one.",
    "The {noun} is smaller than in the photos, otherwise a solid purchase.",
    "Returned the {noun} because it stopped working after a week, disappointing.",
]
REVIEW_ZH = [
    "这个{noun}质量很好，物流也很快，会推荐给朋友。",
    "{noun}用了一个月，效果不错，性价比很高。",
    "收到的{noun}有点小瑕疵，客服处理得很及时。",
    "{noun}比想象中轻便，做工精细，非常满意。",
]
ACTIONS = ["view"] * 6 + ["click"] * 3 + ["cart"] * 2 + ["purchase"]


@dataclass(frozen=True)
class Catalogue:
    """Items as messages for the `items` topic, and their ids per category (for users' tastes)."""

    items: list[dict]
    by_category: dict[str, list[str]]
    nouns: dict[str, str]  # item_id -> noun (reviews talk about it)


def catalogue(n: int, seed: int = 7) -> Catalogue:
    """n product-like items, about 30% with Chinese titles, unique titles (a model code per item)."""
    rng = random.Random(seed)
    names = list(CATEGORIES)
    items, by_category, nouns = [], {c: [] for c in names}, {}
    for i in range(n):
        category = names[i % len(names)]
        en, zh = CATEGORIES[category]
        code = f"{chr(65 + rng.randrange(26))}{rng.randrange(1000):03d}"
        if rng.random() < 0.3:
            noun = rng.choice(zh)
            title = f"{rng.choice(BRANDS_ZH)}{rng.choice(ADJ_ZH)}{noun} {code}"
            lang = "zh"
        else:
            noun = rng.choice(en)
            title = f"{rng.choice(BRANDS_EN)} {rng.choice(ADJ_EN)} {noun} {code}"
            lang = "en"
        item_id = f"p{i:07d}"
        items.append({"item_id": item_id, "title": title, "category": category, "tags": [lang, category]})
        by_category[category].append(item_id)
        nouns[item_id] = noun
    return Catalogue(items, by_category, nouns)


@dataclass
class Users:
    """Each user's favourite categories; events draw items from them with a popularity skew."""

    cat: Catalogue
    n: int
    seed: int = 11

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        names = list(self.cat.by_category)
        self.tastes = [rng.sample(names, 2) for _ in range(self.n)]

    def pick_item(self, rng: random.Random, user: int) -> str:
        """An item of the user's tastes (80%) or any category, skewed to the head of each list (popular items)."""
        names = self.tastes[user] if rng.random() < 0.8 else list(self.cat.by_category)
        ids = self.cat.by_category[rng.choice(names)]
        return ids[min(int(rng.paretovariate(1.2)) - 1, len(ids) - 1)] if rng.random() < 0.5 else rng.choice(ids)


def known_item_events(users: Users, n: int, prefix: str, seed: int, user_offset: int = 0) -> list[dict]:
    """n view/click/cart/purchase events of known items, spread over the users, ids prefix-0.. in order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = rng.randrange(users.n)
        out.append({"event_id": f"{prefix}-{i}", "user_id": f"u{u + user_offset}", "type": rng.choice(ACTIONS),
                    "item_id": users.pick_item(rng, u), "ts": BASE_TS + i})
    return out


def text_events(users: Users, n: int, prefix: str, seed: int, user_offset: int = 0) -> list[dict]:
    """n events carrying free text: reviews of an item (~15-25 tokens) and searches (a few words), half each."""
    rng = random.Random(seed)
    cat = users.cat
    out = []
    for i in range(n):
        u = rng.randrange(users.n)
        item_id = users.pick_item(rng, u)
        noun = cat.nouns[item_id]
        chinese = any("\u4e00" <= ch <= "\u9fff" for ch in noun)
        event = {"event_id": f"{prefix}-{i}", "user_id": f"u{u + user_offset}", "ts": BASE_TS + 10_000_000 + i}
        if i % 2 == 0:
            template = rng.choice(REVIEW_ZH if chinese else REVIEW_EN)
            event.update(type="review", item_id=item_id, text=template.format(noun=noun))
        else:
            adj = rng.choice(ADJ_ZH if chinese else ADJ_EN)
            event.update(type="search", text=f"{adj}{noun}" if chinese else f"{adj} {noun}")
        out.append(event)
    return out
