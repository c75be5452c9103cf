"""Generated questions with computed answers: the base content the SFT builder attaches instructions to.

    task, question, answer, topic, key = generate(rng)

Each task computes its answer (arithmetic, letters, dates with the datetime module, ...) or looks it up in a small
table of facts that do not change (capitals, opposites, plurals), and writes it as one to three short, complete
sentences: the final answer, with or without a line of working, so a model learns a helpful answer's shape and
the list-like instructions have sentences to arrange. No abbreviations (the sentence splitter would cut at
"e.g.") and no markdown. `key` names the question's content, not its wording, so two phrasings of one question
never land on both sides of a train/held-out split.
"""

from __future__ import annotations

import calendar
import datetime
import random

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jamal", "Kofi", "Lena",
         "Mateo", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Vera", "Wei", "Yusuf", "Zoe", "Leo",
         "Maya", "Noah", "Olivia", "Ravi", "Sofia")  # fmt: skip
OBJECTS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "stamps", "cards", "coins",
           "balloons", "crayons", "eggs", "flowers", "beads", "oranges", "buttons", "candles", "cupcakes")  # fmt: skip
WORDS = ("apple", "banana", "strawberry", "planet", "garden", "window", "mountain", "river", "pencil", "library",
         "elephant", "giraffe", "butterfly", "kitchen", "teacher", "rocket", "orange", "computer", "bicycle", "island",
         "candle", "history", "morning", "blanket", "monkey", "village", "sandwich", "umbrella", "pillow", "forest",
         "thunder", "dragon", "penguin", "letter", "bottle", "summer", "winter", "basket", "button", "silver",
         "yellow", "purple", "coffee", "cheese", "pepper", "mirror", "ladder", "ocean", "desert", "castle",
         "jungle", "tomato", "potato", "balloon", "cabbage", "necklace", "hammer", "pyramid", "volcano", "diamond",
         "shadow", "bridge", "rabbit", "turtle", "squirrel", "dolphin", "whistle", "journey", "puzzle", "mission",
         "success", "address", "committee", "balance", "engineer", "keyboard", "notebook", "calendar", "triangle",
         "question")  # fmt: skip
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
            "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Australia": "Canberra",
            "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Egypt": "Cairo", "Kenya": "Nairobi",
            "Nigeria": "Abuja", "Russia": "Moscow", "the United Kingdom": "London", "Ireland": "Dublin",
            "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
            "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara", "Belgium": "Brussels", "Austria": "Vienna",
            "Hungary": "Budapest", "the Czech Republic": "Prague", "South Korea": "Seoul", "Thailand": "Bangkok",
            "Vietnam": "Hanoi", "the Philippines": "Manila", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana",
            "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Ghana": "Accra", "Ethiopia": "Addis Ababa",
            "Morocco": "Rabat", "New Zealand": "Wellington", "Ukraine": "Kyiv", "Romania": "Bucharest",
            "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Iceland": "Reykjavik",
            "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Malaysia": "Kuala Lumpur",
            "Switzerland": "Bern", "Brazil": "Brasilia", "Colombia": "Bogota"}  # fmt: skip
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "full": "empty",
             "early": "late", "young": "old", "strong": "weak", "rich": "poor", "hard": "soft", "wet": "dry",
             "high": "low", "long": "short", "loud": "quiet", "thick": "thin", "clean": "dirty", "easy": "difficult",
             "inside": "outside", "true": "false", "win": "lose", "buy": "sell", "push": "pull", "always": "never",
             "remember": "forget", "cheap": "expensive", "deep": "shallow", "friend": "enemy", "day": "night",
             "north": "south", "east": "west", "before": "after", "first": "last", "same": "different",
             "awake": "asleep", "wide": "narrow", "polite": "rude", "heavy": "light", "open": "closed",
             "ancient": "modern", "arrive": "leave", "question": "answer", "begin": "end",
             "above": "below"}  # fmt: skip
PLURALS = {"child": "children", "mouse": "mice", "goose": "geese", "man": "men", "woman": "women", "tooth": "teeth",
           "foot": "feet", "person": "people", "ox": "oxen", "sheep": "sheep", "deer": "deer", "leaf": "leaves",
           "knife": "knives", "wolf": "wolves", "half": "halves", "life": "lives", "potato": "potatoes",
           "tomato": "tomatoes", "hero": "heroes", "city": "cities", "baby": "babies", "box": "boxes", "bus": "buses",
           "church": "churches", "dish": "dishes", "story": "stories", "key": "keys", "toy": "toys", "day": "days",
           "cat": "cats", "glass": "glasses", "fox": "foxes"}  # fmt: skip
IRREGULAR = ("child", "mouse", "goose", "man", "woman", "tooth", "foot", "person", "ox")
UNITS = [("kilometers", "kilometer", "meters", 1000), ("meters", "meter", "centimeters", 100),
         ("kilograms", "kilogram", "grams", 1000), ("hours", "hour", "minutes", 60),
         ("minutes", "minute", "seconds", 60), ("liters", "liter", "milliliters", 1000), ("days", "day", "hours", 24),
         ("weeks", "week", "days", 7), ("feet", "foot", "inches", 12), ("yards", "yard", "feet", 3),
         ("years", "year", "months", 12), ("centimeters", "centimeter", "millimeters", 10)]  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _say(rng: random.Random, final: str, *working: str, lead: bool = True) -> str:
    """The final answer alone, or with its working (sentences) after it, or (lead) before it, leading up to it."""
    if not working or rng.random() < 0.25:
        return final
    return " ".join([*working, final]) if lead and rng.random() < 0.4 else " ".join([final, *working])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _list(xs) -> str:
    return ", ".join(map(str, xs))


# Each task: rng -> (question, answer, topic, the content's key parts)
def word_problem(rng):
    n, o, op = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice("+-x/")
    a, b = rng.randint(3, 60), rng.randint(2, 30)
    if op == "+":
        q = rng.choice([f"{n} has {a} {o}. {n} gets {b} more. How many {o} does {n} have now?",
                        f"{n} had {a} {o} and then found {b} more. How many {o} does {n} have in total?"])  # fmt: skip
        why = f"{n} starts with {a} {o}.", f"Then {n} gets {b} more.", f"{a} plus {b} is {a + b}."
        return q, _say(rng, f"{n} has {a + b} {o} now.", *why), "Adding Up", (op, a, b)
    if op == "-":
        a += b
        q = rng.choice([f"{n} had {a} {o} and gave {b} of them to a friend. How many {o} are left?",
                        f"There were {a} {o} on the table. {n} took {b}. How many {o} are still there?"])  # fmt: skip
        why = f"There were {a} {o} at first.", f"{b} of them were taken away.", f"{a} minus {b} is {a - b}."
        return q, _say(rng, f"There are {a - b} {o} left.", *why), "Taking Away", (op, a, b)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if op == "x":
        q = f"There are {a} boxes with {b} {o} in each box. How many {o} are there in total?"
        why = f"There are {a} boxes.", f"Each box holds {b} {o}.", f"{a} times {b} is {a * b}."
        return q, _say(rng, f"There are {a * b} {o} in total.", *why), "Equal Groups", (op, a, b)
    q = f"{n} shares {a * b} {o} equally among {b} friends. How many {o} does each friend get?"
    why = f"There are {a * b} {o} to share.", f"They go to {b} friends.", f"{a * b} divided by {b} is {a}."
    return q, _say(rng, f"Each friend gets {a} {o}.", *why), "Sharing", (op, a, b)


def arithmetic(rng):
    op = rng.choice(["plus", "minus", "times", "divided by"])
    a, b = (
        (rng.randint(10, 999), rng.randint(10, 999))
        if op in ("plus", "minus")
        else (rng.randint(2, 99), rng.randint(2, 12))
    )
    if op == "minus" and b > a:
        a, b = b, a
    if op == "divided by":
        a *= b
    c = {"plus": a + b, "minus": a - b, "times": a * b, "divided by": a // b}[op]
    check = {"plus": f"{c} minus {b} is {a}", "minus": f"{c} plus {b} is {a}", "times": f"{c} divided by {b} is {a}",
             "divided by": f"{c} times {b} is {a}"}[op]  # fmt: skip
    q = rng.choice([f"What is {a} {op} {b}?", f"Calculate {a} {op} {b}.", f"Can you work out {a} {op} {b}?"])
    return q, _say(rng, f"{a} {op} {b} is {c}.", f"To check, {check}.", lead=False), "Arithmetic", (op, a, b)


def letters(rng):
    w, kind = rng.choice(WORDS), rng.choice(["count", "length", "reverse", "vowels"])
    spelled = f"Spelled out, the word is {'-'.join(w)}."
    if kind == "count":
        absent = [c for c in "bcdfghjklmnpqrstvwxyz" if c not in w]
        c = rng.choice(w) if rng.random() < 0.8 else rng.choice(absent)
        k = w.count(c)
        final = f'The letter "{c}" appears {_plural(k, "time")} in the word "{w}".'
        final = final if k else f'The letter "{c}" does not appear in the word "{w}".'
        q = f'How many times does the letter "{c}" appear in the word "{w}"?'
        why = spelled, f"That makes {k} in total." if k else f'There is no "{c}" in it.'
        return q, _say(rng, final, *why), "Counting Letters", (kind, w, c)
    if kind == "length":
        q = rng.choice([f'How many letters are in the word "{w}"?', f'How long is the word "{w}", in letters?'])
        return q, _say(rng, f'The word "{w}" has {len(w)} letters.', spelled), "Word Length", (kind, w)
    if kind == "reverse":
        q = rng.choice([f'Write the word "{w}" backwards.', f'Reverse the letters of the word "{w}".'])
        return q, f'The word "{w}" written backwards is "{w[::-1]}".', "Backwards", (kind, w)
    final = f'The word "{w}" has {_plural(sum(c in "aeiou" for c in w), "vowel")}.'
    q = f'How many vowels are in the word "{w}"?'
    return q, _say(rng, final, "I counted the letters a, e, i, o and u."), "Vowels", (kind, w)


def lists(rng):
    xs, kind = rng.sample(range(1, 100), rng.randint(4, 7)), rng.choice(["sort", "words", "max", "min", "sum", "mean"])
    if kind == "sort":
        down = rng.random() < 0.3
        order = "from largest to smallest" if down else "from smallest to largest"
        final = f"{order.capitalize()}, the numbers are {_list(sorted(xs, reverse=down))}."
        why = f"The smallest is {min(xs)} and the largest is {max(xs)}."
        return f"Sort these numbers {order}: {_list(xs)}.", _say(rng, final, why), "Sorted Numbers", (kind, down, *xs)
    if kind == "words":
        ws = rng.sample(WORDS, rng.randint(3, 6))
        final = f"In alphabetical order, the words are {_list(sorted(ws))}."
        return f"Put these words in alphabetical order: {_list(ws)}.", final, "Alphabetical Order", (kind, *ws)
    if kind in ("max", "min"):
        word, x = ("largest", max(xs)) if kind == "max" else ("smallest", min(xs))
        q = f"What is the {word} number in this list: {_list(xs)}?"
        return q, f"The {word} number in the list is {x}.", "Finding Extremes", (kind, *xs)
    if kind == "sum":
        why = f"Adding them one by one, {' plus '.join(map(str, xs))} is {sum(xs)}."
        return (
            f"What is the sum of {_list(xs)}?",
            _say(rng, f"The sum is {sum(xs)}.", why),
            "Adding a List",
            (kind, *xs),
        )
    xs[-1] += -sum(xs) % len(xs)  # a whole-number average
    m = sum(xs) // len(xs)
    why = (
        f"The numbers add up to {sum(xs)}.",
        f"There are {len(xs)} numbers.",
        f"{sum(xs)} divided by {len(xs)} is {m}.",
    )
    return f"What is the average of {_list(xs)}?", _say(rng, f"The average is {m}.", *why), "Averages", (kind, *xs)


def units(rng):
    (big, one, small, f), x = rng.choice(UNITS), rng.randint(2, 20)
    if rng.random() < 0.6:
        q = rng.choice([f"How many {small} are in {x} {big}?", f"Convert {x} {big} to {small}."])
        why = f"There are {f} {small} in one {one}.", f"So multiply {x} by {f}, which gives {x * f}."
        return q, _say(rng, f"{x} {big} is {x * f} {small}.", *why), "Unit Conversion", (big, x)
    q = rng.choice([f"How many {big} are {x * f} {small}?", f"Convert {x * f} {small} to {big}."])
    why = f"There are {f} {small} in one {one}.", f"So divide {x * f} by {f}, which gives {x}."
    return q, _say(rng, f"{x * f} {small} is {x} {big}.", *why), "Unit Conversion", (small, x)


def temperature(rng):
    c = rng.randrange(-20, 105, 5)
    fahr = c * 9 // 5 + 32
    q = rng.choice([f"What is {c} degrees Celsius in Fahrenheit?", f"Convert {c} degrees Celsius to Fahrenheit."])
    why = "To convert, multiply by 9, divide by 5 and add 32.", f"{c} times 9 divided by 5 is {c * 9 // 5}."
    why += (f"{c * 9 // 5} plus 32 is {fahr}.",)
    return q, _say(rng, f"{c} degrees Celsius is {fahr} degrees Fahrenheit.", *why), "Temperature", (c,)


def compare(rng):
    if rng.random() < 0.3:
        a, b = rng.sample([rng.randint(1, 99) / 100, rng.randint(1, 9) / 10], 2)
        if a == b:
            a = round(a + 0.01, 2)
        hi, lo = max(a, b), min(a, b)
        why = f"Written with two decimal places, {hi:.2f} is more than {lo:.2f}."
        return f"Which is bigger: {a} or {b}?", _say(rng, f"{hi} is bigger than {lo}.", why), "Decimals", (a, b)
    a, b = rng.sample(range(10, 1000), 2)
    if rng.random() < 0.5:
        return f"Which number is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}.", "Comparing", (a, b)
    final = f"Yes, {a} is greater than {b}." if a > b else f"No, {a} is less than {b}."
    return f"Is {a} greater than {b}?", final, "Comparing Numbers", ("greater", a, b)


def sequence(rng):
    kind, k = rng.choice(["add", "add", "times", "squares", "letters"]), rng.randint(4, 5)
    if kind == "add":
        a, d = rng.randint(1, 30), rng.randint(2, 12)
        xs, why = [a + d * i for i in range(k + 1)], f"Each number is {d} more than the one before it."
    elif kind == "times":
        a, r = rng.randint(1, 5), rng.randint(2, 3)
        xs, why = [a * r**i for i in range(k + 1)], f"Each number is {r} times the one before it."
    elif kind == "squares":
        a = rng.randint(1, 6)
        xs = [(a + i) ** 2 for i in range(k + 1)]
        why = f"These are square numbers, and {a + k} times {a + k} is {xs[-1]}."
    else:
        a, d = rng.randint(0, 10), rng.randint(1, 3)
        xs = [ALPHABET[a + d * i] for i in range(k + 1)]
        why = f"Each letter is {_plural(d, 'place')} after the one before it in the alphabet."
    q = rng.choice([f"What comes next in the sequence {_list(xs[:-1])}?",
                    f"What is the next item in this sequence: {_list(xs[:-1])}?"])  # fmt: skip
    final = f"The next {'letter' if kind == 'letters' else 'number'} is {xs[-1]}."
    return q, _say(rng, final, why), "Next in the Sequence", (kind, *xs)


def _date(d: datetime.date, year: bool = True) -> str:
    return f"{calendar.month_name[d.month]} {d.day}" + (f", {d.year}" if year else "")


def calendar_task(rng):
    kind, year = rng.choice(["weekday", "date", "between", "leap", "month"]), rng.randint(1990, 2030)
    if kind == "weekday":
        d, n = rng.choice(DAYS), rng.randint(2, 30)
        end, weeks, rest = DAYS[(DAYS.index(d) + n) % 7], _plural(n // 7, "week"), _plural(n % 7, "day")
        why = f"{n} days is {weeks} and {rest}, and {rest} after {d} is {end}."
        why = f"{n} days is exactly {weeks}." if n % 7 == 0 else why if n > 7 else f"Counting on from {d} gives {end}."
        q = f"If today is {d}, what day of the week will it be in {n} days?"
        return q, _say(rng, f"It will be {end}.", why), "Days of the Week", (kind, d, n)
    n = rng.randint(2, 60)
    start = datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randint(0, 364 - n))  # ends in the same year
    end = start + datetime.timedelta(days=n)
    if kind == "date":
        q = f"What date is {n} days after {_date(start)}?"
        return q, f"{n} days after {_date(start)} is {_date(end)}.", "Counting Days", (kind, start, n)
    if kind == "between":
        q = f"In {start.year}, how many days after {_date(start, False)} is {_date(end, False)}?"
        return q, f"{_date(end, False)} is {n} days after {_date(start, False)}.", "Counting Days", (kind, start, n)
    if kind == "leap":
        year = rng.choice([rng.randint(1890, 2100), rng.randrange(1600, 2401, 100)])
        final = f"Yes, {year} is a leap year." if calendar.isleap(year) else f"No, {year} is not a leap year."
        rule = (
            "A year divisible by 4 is a leap year, except that a year divisible by 100 must also be divisible by 400."
        )
        return f"Is {year} a leap year?", _say(rng, final, rule), "Leap Years", (kind, year)
    m = rng.randint(1, 12)
    final = f"{calendar.month_name[m]} {year} has {calendar.monthrange(year, m)[1]} days."
    if m == 2:
        final = _say(rng, final, f"{year} is {'' if calendar.isleap(year) else 'not '}a leap year.")
    return f"How many days are in {calendar.month_name[m]} {year}?", final, "Months", (kind, year, m)


def numbers(rng):
    kind = rng.choice(["prime", "parity", "percent", "round", "clock"])
    if kind == "prime":
        n = rng.randint(4, 200)
        p = next((d for d in range(2, int(n**0.5) + 1) if n % d == 0), None)
        final = f"No, {n} is not a prime number." if p else f"Yes, {n} is a prime number."
        why = f"It is {p} times {n // p}." if p else f"Its only divisors are 1 and {n}."
        rule = "A prime number has no divisors other than 1 and itself."
        return f"Is {n} a prime number?", _say(rng, final, why, rule, lead=False), "Prime Numbers", (kind, n)
    if kind == "parity":
        n = rng.randint(10, 9999)
        why = f"It ends in {n % 10}, and a number is even exactly when its last digit is even."
        return (
            f"Is {n} even or odd?",
            _say(rng, f"{n} is {'odd' if n % 2 else 'even'}.", why, lead=False),
            "Even or Odd",
            (kind, n),
        )
    if kind == "percent":
        p, base = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75]), rng.randint(1, 40) * 20
        r = base * p // 100
        why = (
            f"{p}% means {p} out of every 100.",
            f"{base} divided by 100 is {base / 100:g}, and that times {p} is {r}.",
        )
        return f"What is {p}% of {base}?", _say(rng, f"{p}% of {base} is {r}.", *why), "Percentages", (kind, p, base)
    if kind == "round":
        n, (name, h) = rng.randint(101, 9999), rng.choice([("ten", 10), ("hundred", 100), ("thousand", 1000)])
        r, digit = (n + h // 2) // h * h, n // (h // 10) % 10  # half rounds up, as taught in school
        place = {10: "ones", 100: "tens", 1000: "hundreds"}[h]
        why = f"The {place} digit is {digit}, so it rounds {'up' if digit >= 5 else 'down'}."
        final = f"{n} rounded to the nearest {name} is {r}."
        return f"Round {n} to the nearest {name}.", _say(rng, final, why), "Rounding", (kind, n, h)
    h, m, dh, dm = rng.randint(0, 14), rng.choice(range(0, 60, 5)), rng.randint(1, 8), rng.choice(range(5, 60, 5))
    t = h * 60 + m + dh * 60 + dm  # at most 23:50
    q = f"Using the 24-hour clock, what time is it {_plural(dh, 'hour')} and {dm} minutes after {h:02d}:{m:02d}?"
    return q, f"It will be {t // 60:02d}:{t % 60:02d}.", "Clock Arithmetic", (kind, h, m, dh, dm)


def everyday(rng):
    kind, n = rng.choice(["area", "perimeter", "change", "age", "alphabet", "after"]), rng.choice(NAMES)
    if kind in ("area", "perimeter"):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        q = f"A rectangle is {a} meters long and {b} meters wide. What is its {kind}?"
        if kind == "area":
            why = "The area of a rectangle is its length times its width.", f"{a} times {b} is {a * b}."
            return q, _say(rng, f"The area is {a * b} square meters.", *why), "Rectangles", (kind, a, b)
        why = "The perimeter is twice the sum of the length and the width.", f"{a} plus {b} is {a + b}."
        why += (f"2 times {a + b} is {2 * (a + b)}.",)
        return q, _say(rng, f"The perimeter is {2 * (a + b)} meters.", *why), "Rectangles", (kind, a, b)
    if kind == "change":
        cost, bill = rng.randint(1, 19), rng.choice([20, 50])
        q = f"A book costs ${cost} and {n} pays with a ${bill} bill. How much change does {n} get?"
        why = f"{n} pays ${bill} for a ${cost} book.", f"{bill} minus {cost} is {bill - cost}."
        return q, _say(rng, f"{n} gets ${bill - cost} in change.", *why), "Making Change", (kind, cost, bill)
    if kind == "age":
        a, k = rng.randint(3, 60), rng.randint(2, 20)
        q = f"{n} is {a} years old. How old will {n} be in {k} years?"
        return q, _say(rng, f"{n} will be {a + k} years old.", f"{a} plus {k} is {a + k}."), "Ages", (kind, a, k)
    if kind == "alphabet":
        i = rng.randint(1, 26)
        final = f"The {_ordinal(i)} letter of the English alphabet is {ALPHABET[i - 1]}."
        return f"What is the {_ordinal(i)} letter of the English alphabet?", final, "The Alphabet", (kind, i)
    i = rng.randint(1, 24)
    q = f"Which letter comes right after {ALPHABET[i]} in the alphabet?"
    return q, f"The letter after {ALPHABET[i]} is {ALPHABET[i + 1]}.", "The Alphabet", (kind, i)


def facts(rng):
    kind = rng.choice(["capital", "opposite", "plural"])
    if kind == "capital":
        c = rng.choice(list(CAPITALS))
        q = rng.choice([f"What is the capital of {c}?", f"Which city is the capital of {c}?"])
        return q, f"The capital of {c} is {CAPITALS[c]}.", "Capital Cities", (kind, c)
    if kind == "opposite":
        w = rng.choice(list(OPPOSITES))
        return f'What is the opposite of "{w}"?', f'The opposite of "{w}" is "{OPPOSITES[w]}".', "Opposites", (kind, w)
    w = rng.choice(list(PLURALS))
    p = PLURALS[w]
    why = ["The word stays the same."] if p == w else ["It is an irregular plural."] if w in IRREGULAR else []
    return (
        f'What is the plural of "{w}"?',
        _say(rng, f'The plural of "{w}" is "{p}".', *why, lead=False),
        "Plurals",
        (kind, w),
    )


TASKS = {f.__name__: f for f in (word_problem, arithmetic, letters, lists, units, temperature, compare, sequence,
                                 calendar_task, numbers, everyday, facts)}  # fmt: skip


def generate(rng: random.Random, task: str | None = None) -> tuple[str, str, str, str, str]:
    """(task, question, answer, topic, key) of one generated question (of `task`, default one drawn uniformly)."""
    task = task or rng.choice(list(TASKS))
    q, a, topic, key = TASKS[task](rng)
    return task, q, a, topic, f"{task}:{':'.join(map(str, key))}"
