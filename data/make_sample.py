"""Write data/sample/: a small invented encyclopedia in DPR's file formats, for the CPU demo and tests.

Nothing in it is real. Countries, cities, rivers, people, inventions and football clubs are drawn
from the syllables, word lists and sentence templates below with a fixed seed, so
`python data/make_sample.py` rewrites byte-identical files. Every entity gets several passages
(one per aspect: history, geography, ...), so passages with the same title act as hard negatives
for each other. Questions are worded differently from the passages ("who founded X" against
"X was established in 1803 by Y"), so an untrained encoder gets some, not all, right at rank 1
and fine-tuning has something to learn.

Files (described in data/sample/README.md):
  psgs.tsv      passages, DPR's psgs_w100.tsv format
  train.json    biencoder records: positive, random negative and BM25 hard negative passages
  dev.json      the same for other questions
  test.qa.csv   question<TAB>['answer', ...], DPR's qas format
"""
import argparse
import contextlib
import csv
import json
import math
import os
import random
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.qa import has_answer  # noqa: E402  (the check the retriever is scored with)

SEED = 2020
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
N_TRAIN, N_DEV, N_TEST = 100, 30, 50
N_NEGATIVES, N_HARD_NEGATIVES = 2, 5
MIN_WORDS, MAX_WORDS = 60, 110
PER_RELATION = 9  # questions per relation ("who founded {city}"): train sees each test relation several times
INDIRECT_WEIGHT = 3  # relations whose questions do not name the passage's title are harder: pick them more often
SPLIT_PATTERN = "RTRDRRTRDRTRRDRTRT"  # R(train) T(test) D(dev) = 10:5:3, dealt round each relation's questions

# ---------------------------------------------------------------------------------------------
# Word lists

ROOTS = ["Vel", "Ost", "Mar", "Tal", "Kor", "Bren", "Ash", "Dun", "Hal", "Isk", "Lun", "Quen", "Sar",
         "Thal", "Ulm", "Var", "Yss", "Zor", "Cal", "Eld", "Fen", "Gor", "Rav", "Nor", "Pel", "Tor",
         "Mir", "Ard", "Bel", "Dra", "Esk", "Gal", "Kel", "Lor", "Mor", "Ner", "Per", "Ren", "Sel",
         "Tam", "Ver", "Wen", "Brav", "Cass", "Dor", "Fal", "Hesk", "Jor", "Lask", "Nim", "Orv",
         "Pry", "Rud", "Skel", "Tresh", "Uth", "Vor", "Aub", "Cren", "Ilm", "Oss", "Stav"]
COUNTRY_ENDS = ["mora", "avia", "enia", "uria", "ovia", "aria", "isca", "ondia", "arra", "estia", "ura"]
CITY_ENDS = ["rel", "ith", "dor", "wick", "holm", "burg", "aro", "esh", "ford", "ven", "stad", "gard",
             "ona", "ec", "ast", "ir", "ulm", "enz", "ay", "oc"]
RIVER_ENDS = ["a", "e", "is", "ur", "ava", "el", "une", "ia", "ant", "oss", "ey", "in"]
PEAK_ENDS = ["horn", "berg", "ak", "ett", "ura", "ion", "dal", "ard"]
SURNAME_ENDS = ["by", "sen", "ard", "ell", "ow", "in", "ick", "ane", "orth", "ley", "er", "ant",
                "ov", "wyn", "ett", "ade", "ling", "mark", "ritz", "off"]
LANGUAGE_ENDS = ["ic", "ese", "i", "ar"]
CURRENCY_ENDS = ["dal", "ren", "ek", "mark", "ari", "ot"]
DISH_ENDS = ["ka", "ni", "otte", "ash", "ina", "ul"]
MALE = ["Aldric", "Tobin", "Corvin", "Halvard", "Oren", "Rufus", "Teodor", "Viggo", "Anselm", "Cato",
        "Emrys", "Gideon", "Ivo", "Kasimir", "Mattias", "Osric", "Lorcan", "Bastian", "Evander",
        "Fabian", "Jurek", "Leander", "Nils", "Piet", "Radek", "Severin", "Tamas", "Ulric", "Wendel",
        "Aurel", "Benedek", "Dario", "Florian", "Gustav", "Henrik", "Ilias", "Joren", "Konrad", "Lasse"]
FEMALE = ["Marta", "Ines", "Sela", "Edda", "Liesl", "Petra", "Sabine", "Ulla", "Wenna", "Yara", "Brida",
          "Dagny", "Fenna", "Hesper", "Jorun", "Linnea", "Nerys", "Pia", "Agnete", "Beatrix", "Clio",
          "Dorota", "Elin", "Greta", "Hedda", "Ilse", "Katrin", "Lenka", "Maren", "Noor", "Oda",
          "Rosalind", "Signe", "Tilda", "Vera", "Zofia", "Alma", "Britt", "Carys", "Delphine"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
FORMS = [("Republic", "president", "president"), ("Kingdom", "king", "queen"),
         ("Grand Duchy", "grand duke", "grand duchess"), ("Principality", "prince", "princess")]
FOUNDER_ROLES = ["warlord", "merchant prince", "chieftain", "military commander", "landowner", "bishop"]
ANIMALS = ["lynx", "heron", "ibex", "otter", "crane", "falcon", "stork", "brown bear", "wolf", "eagle owl"]
EXPORTS = ["tin", "saffron", "timber", "salted cod", "copper", "olive oil", "porcelain", "amber", "flax", "marble"]
DISH_DESCRIPTIONS = ["a stew of lamb and barley", "dumplings filled with river fish",
                     "a flat bread baked with onions and goat cheese", "smoked eel served with sour cream",
                     "a sweet pudding of millet and honey", "a thick soup of beans and mutton",
                     "pancakes folded around wild mushrooms", "a pie of pork and chestnuts",
                     "cabbage rolls stuffed with rice and dill", "a porridge of rye cooked in buttermilk"]
CLIMATES = ["mild and wet, with cool summers", "dry in the interior and humid along the coast",
            "cold in winter and warm in summer", "marked by long, snowy winters in the hills",
            "temperate, with most rain falling in autumn", "sunny and dry for most of the year"]
INDUSTRIES = ["glassmaking", "shipbuilding", "brewing", "clockmaking", "paper milling", "leather tanning",
              "silk weaving", "salt mining", "shoemaking", "map printing", "soap boiling", "rope making",
              "bell founding", "cheese making", "tile making", "organ building", "lace making", "pottery",
              "coal mining", "barrel making", "furniture making", "cloth dyeing", "lens grinding",
              "candle making"]
CITY_PURPOSES = ["trading post", "fortress", "river crossing", "fishing harbour", "monastery",
                 "customs station", "market town", "mining camp"]
FIELDS = ["mathematics", "law", "medicine", "theology", "chemistry", "drawing", "music", "philosophy",
          "natural history", "engineering", "classics", "astronomy"]
FESTIVALS = ["Lantern", "Harvest Moon", "Kite", "Ferry", "Bell", "Apple", "Candle", "Lily", "Herring",
             "Bonfire", "Chestnut", "Barley", "Mask", "River Light", "Bread", "Plum", "Drum", "Thistle",
             "Swan", "Honey", "Juniper", "Cherry", "Lamplighter", "Boatmen"]
FESTIVAL_KINDS = ["a week of processions and street music", "a night market lit by paper lamps",
                  "a rowing race followed by open-air dancing", "a fair with craft stalls and puppet shows",
                  "a series of concerts in the squares of the old town", "a parade of decorated boats"]
LANDMARKS = ["the {city} Clock Tower", "the Cathedral of Saint {first}", "the {surname} Bridge",
             "the {city} Opera House", "the Palace of the Counts of {city}", "the Old Exchange of {city}",
             "the Church of Saint {first}", "the {city} Water Gate"]
RIVERS_FISH = ["grayling", "brown trout", "sturgeon", "eels", "salmon", "pike", "char", "barbel", "carp",
               "perch", "whitefish", "lampreys"]
PARENT_JOBS = ["ferryman", "clockmaker", "schoolteacher", "tanner", "bookbinder", "blacksmith", "miller",
               "pharmacist", "carpenter", "customs officer", "sea captain", "weaver", "baker", "lawyer",
               "organist", "stonemason", "innkeeper", "country doctor", "printer", "gardener", "cooper",
               "saddler", "locksmith", "surveyor", "notary", "shepherd", "glazier", "harbour pilot",
               "postmaster", "wheelwright"]
SPOUSE_JOBS = ["singer", "physician", "bookseller", "translator", "actor", "mathematician", "photographer",
               "teacher", "diplomat", "journalist", "sculptor", "violinist"]
TITLE_ADJ = ["Lantern", "Silent", "Winter", "Copper", "Hollow", "Glass", "Drowned", "Northern", "Burning",
             "Paper", "Quiet", "Crimson", "Last", "Distant", "Sleeping", "Iron", "Golden", "Broken",
             "Wandering", "Bitter", "Secret", "Patient"]
TITLE_NOUN = ["Orchard", "Harbour", "Garden", "Shore", "Ferry", "Mill", "Choir", "Lighthouse", "Market",
              "Forest", "Road", "Well", "House", "Island", "Wedding", "Meadow", "Staircase", "Bell",
              "Procession", "Summer", "Regiment", "Inheritance"]
# What a work is about: (as the passage says it, as a question asks about it)
SUBJECTS = {
    "novelist": [("a ferryman's daughter who inherits a failing shipyard", "a girl who is left a shipyard that is going bankrupt"),
                 ("two brothers divided by a border war", "siblings fighting on opposite sides of a frontier conflict"),
                 ("a village schoolteacher who hides a deserter", "a teacher who shelters a runaway soldier"),
                 ("the last season of a travelling circus", "a circus on its final tour"),
                 ("a family of glassblowers over three generations", "three generations of people who blow glass"),
                 ("a young clerk who discovers his employer's forgeries", "an office worker who finds out his boss is a forger")],
    "painter": [("fishing boats crowding a harbour at dawn", "boats in a port early in the morning"),
                ("a wedding procession crossing a frozen river", "a bride and guests walking over the ice"),
                ("the artist's mother reading by candlelight", "an old woman with a book lit by a candle"),
                ("a burning mill seen across a lake", "a mill on fire on the far side of the water"),
                ("soldiers resting in an orchard", "troops taking a break under fruit trees"),
                ("a market square in heavy rain", "a town market during a downpour")],
    "composer": [("a smuggler who falls in love with a customs officer's daughter", "a smuggler in love with the daughter of a tax collector"),
                 ("the siege of a mountain fortress", "a castle in the hills surrounded by an army"),
                 ("a queen who gives up her throne for a sailor", "a queen who abdicates to marry a seaman"),
                 ("a miller who makes a bargain with a river spirit", "a man who strikes a deal with a water sprite"),
                 ("a lighthouse keeper stranded by a winter storm", "a man cut off at a lighthouse by bad weather")],
    "poet": [("the sea and the lives of fishermen", "fishing and the ocean"),
             ("the seasons in a mountain village", "the changing year in a village in the hills"),
             ("love and exile", "being in love and living far from home"),
             ("the streets of a city at night", "a town after dark")],
}
INVENTION_DESCRIPTIONS = {  # how a question describes each invention without naming it
    "spiral hygrometer": "checks how damp stored grain is", "counterweight loom": "weaves canvas for sails",
    "lantern telegraph": "signals between lighthouses with lights", "harbour dial": "shows how deep the water is at a pier",
    "frost saw": "cuts ice out of lakes in winter", "drum press": "prints maps in colour",
    "cradle hoist": "lifts stone out of quarries", "bellows pump": "empties water from mines",
    "sorting wheel": "sorts mail by address", "salt still": "turns sea water into fresh water",
    "glass log": "tells how fast a ship is moving", "weather harp": "uses the wind to warn of bad weather",
}
AWARD_NOUNS = ["Silver Oak", "Northern Star", "Iron Crown", "White Rose", "Golden Key", "Laurel",
               "Blue Lantern", "Red Falcon", "Seven Towers", "Open Book", "Evening Bell", "Compass"]
PLANT_ADJ = ["snow", "marsh", "copper", "blue", "dwarf", "silver", "cliff", "night", "scarlet", "river"]
PLANT_NOUN = ["orchid", "lily", "saxifrage", "poppy", "gentian", "bellflower", "crocus", "violet"]
CLUB_FORMS = ["{city} Rovers", "Athletic {city}", "{city} Harriers", "FC {city}", "Sporting {city}",
              "{city} United", "Racing {city}", "{city} Wanderers"]
CLUB_FOUNDERS = ["a group of dock workers", "the pupils of a grammar school", "workers from a textile mill",
                 "members of a rowing club", "a society of railway clerks", "the members of a gymnastics society"]
NICKNAMES = [("Ironmen", "ironworks that once stood beside the ground"),
             ("Herons", "herons that nest along the river"), ("Millers", "flour mills of the old quarter"),
             ("Lamplighters", "gas lamps the founders once tended"), ("Ferrymen", "boatmen who founded the club"),
             ("Foxes", "fox on the city's coat of arms"), ("Bargemen", "barges that once crowded the quay"),
             ("Ravens", "ravens kept at the old castle"), ("Tanners", "tanneries near the first pitch"),
             ("Anchors", "anchor on the club badge"), ("Owls", "owl painted on the old stand"),
             ("Masons", "stonemasons among the first players")]
COLOURS = ["red", "white", "blue", "green", "black", "yellow", "orange", "claret", "sky blue", "navy",
           "gold", "maroon"]
NUMBER_WORDS = ["six", "seven", "eight", "nine", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                "sixteen", "eighteen", "nineteen"]
DERBY_NOUNS = ["Lantern", "Bridge", "Valley", "Salt", "Chapel", "Harbour", "Gate", "Old Road", "Tollhouse",
               "Quayside", "Ridge", "Market"]
STADIUMS = ["{surname} Park", "{surname} Road", "the {surname} Ground", "{surname} Stadium", "{surname} Field"]
# (name, kind, what it does with {a} in it, answer, questions)
INVENTIONS = [
    ("spiral hygrometer", "instrument", "reads the {a} of stored grain", "moisture",
     ["what does a spiral hygrometer detect in grain", "what property of grain is checked with a spiral hygrometer"]),
    ("counterweight loom", "weaving machine", "turns hemp yarn into {a}", "sailcloth",
     ["what fabric is made on a counterweight loom", "what was the counterweight loom built to produce"]),
    ("lantern telegraph", "signalling system", "passes messages between lighthouses with {a}", "shuttered lamps",
     ["how did a lantern telegraph send messages", "what did the lantern telegraph use to signal"]),
    ("harbour dial", "gauge", "shows the {a} at the quay", "height of the water",
     ["what does a harbour dial indicate", "what do sailors read on a harbour dial"]),
    ("frost saw", "hand machine", "cuts {a} from frozen lakes for storage", "blocks of ice",
     ["what does a frost saw cut", "what was the frost saw used to harvest"]),
    ("drum press", "printing machine", "prints {a} in several colours in a single pass", "maps",
     ["what does a drum press print", "what kind of documents are produced on a drum press"]),
    ("cradle hoist", "lifting machine", "raises {a} from deep quarries", "cut stone",
     ["what is lifted with a cradle hoist", "what does a cradle hoist carry up"]),
    ("bellows pump", "pump", "drains water from {a}", "flooded mine shafts",
     ["what is a bellows pump used to empty", "where is a bellows pump used"]),
    ("sorting wheel", "machine", "sorts letters by district in {a}", "post offices",
     ["where is a sorting wheel used", "what kind of building uses a sorting wheel"]),
    ("salt still", "apparatus", "makes {a} from seawater on long voyages", "drinking water",
     ["what does a salt still produce", "what is a salt still used to make"]),
    ("glass log", "instrument", "measures the {a} through the water", "speed of a ship",
     ["what does a glass log measure", "what do sailors use a glass log to find out"]),
    ("weather harp", "warning device", "gives warning of {a} by the sound of the wind in its strings", "storms",
     ["what does a weather harp warn of", "what does the weather harp alert people to"]),
]
SUCCESSOR_NOUNS = ["meter", "engine", "apparatus", "machine", "recorder", "system"]
ADOPTERS = ["navy of {country}", "postal service of {country}", "{country} state railway",
            "harbour board of {city}", "army of {country}", "grain exchange of {city}"]
MATERIALS = ["brass", "oak", "cast iron", "copper", "walnut", "bronze"]

CAREER_STARTS = {"painter": "an assistant in a portrait studio", "novelist": "a clerk in a shipping office",
                 "composer": "an organist in a village church", "poet": "a teacher of languages",
                 "engineer": "an apprentice in a foundry", "explorer": "a surveyor in the army",
                 "architect": "a draughtsman in a builder's office", "botanist": "a gardener's assistant"}
POSTS = {"painter": "professor at the academy of art in {study_city}", "novelist": "editor of a literary weekly in {study_city}",
         "composer": "director of the conservatory in {venue}", "poet": "librarian of the university in {study_city}",
         "engineer": "chief engineer of a foundry in {birthplace}", "explorer": "president of the geographical society of {country}",
         "architect": "city architect of {birthplace}", "botanist": "keeper of the botanical garden in {study_city}"}

PRONOUNS = {"m": dict(he="he", He="He", his="his", His="His", him="him"),
            "f": dict(he="she", He="She", his="her", His="Her", him="her")}

# ---------------------------------------------------------------------------------------------
# Sentences without questions, to bring passages to Wikipedia length. No numbers, no names
# other than the entity's own, so they never carry another question's answer.

FILLERS = {
    "country": [
        "Local government is organised in provinces, each with an elected council.",
        "The road network is dense in the lowlands but thins out in the hills.",
        "Many villages keep their own dialect, although these are slowly disappearing.",
        "Historians still argue about how much of the early chronicles can be trusted.",
        "The coastline is broken by sheltered bays that have long served as harbours.",
        "Emigration during hard winters left several upland districts half empty.",
        "The country has a strong tradition of choral singing and folk dance.",
        "Rail lines link the capital with every provincial town of any size.",
        "Schooling is free and compulsory, and literacy is nearly universal.",
        "Much of the interior is covered by beech and pine forest.",
        "Its parliament meets in a building that once served as a royal stable.",
        "Tourism has grown steadily, drawn by the old towns and the mountain lakes.",
        "Relations with its neighbours have mostly been peaceful in modern times.",
        "Farming remains important, with rye, potatoes and fruit the main crops.",
    ],
    "city": [
        "The old town keeps much of its medieval street plan.",
        "A ring road built on the line of the former walls carries most traffic.",
        "Several bridges connect the two halves of the town.",
        "The market square is lined with tall merchant houses with painted gables.",
        "In the nineteenth century the town spread onto the surrounding farmland.",
        "A tram line runs from the station to the harbour district.",
        "Many of the older houses were rebuilt in brick after the wars.",
        "The town is surrounded by orchards and small vineyards.",
        "Its covered market is among the busiest in the region.",
        "The suburbs grew quickly after the arrival of the railway.",
        "A small botanical garden occupies the grounds of a former convent.",
        "Local cooking is known for smoked fish and dark rye bread.",
        "The municipal library holds a collection of early printed books.",
        "Pleasure boats run along the waterfront during the summer months.",
    ],
    "river": [
        "Its valley is narrow and wooded in the upper reaches and broad and marshy further down.",
        "Floods in spring often cover the meadows along the banks.",
        "Barges once carried grain and timber along much of its length.",
        "Several old watermills still stand along its banks.",
        "The lower course is lined with dykes built to protect the farmland.",
        "Birdwatchers come for the herons and kingfishers of the reed beds.",
        "Canoeing and angling are popular in the summer months.",
        "In hard winters the river freezes over and was once used as a road.",
        "Its water is clear in the hills and turns brown with silt in the plain.",
        "A towpath follows the river for long stretches and is now a cycle route.",
    ],
    "person": [
        "Contemporaries described {him} as shy in company but tireless at work.",
        "{His} letters, published after {his} death, give a vivid picture of the period.",
        "{He} travelled widely and kept detailed notebooks on each journey.",
        "Critics were divided at first, but {his} reputation grew steadily.",
        "{He} was known for long walks in the countryside, which {he} said cleared {his} mind.",
        "Several of {his} pupils later became well known in their own right.",
        "{He} rarely gave interviews and disliked public ceremonies.",
        "Much of {his} early work was lost in a fire.",
        "{He} corresponded with many of the leading figures of the day.",
        "A street in the old town is named after {him}.",
        "{His} work has been the subject of several exhibitions and biographies.",
        "Friends remembered {his} dry humour and generosity.",
        "As a child {he} was often ill and was taught at home.",
        "{He} spoke several languages and read widely in each of them.",
        "Money was short for most of {his} early years.",
        "{He} spent several winters abroad, mostly for {his} health.",
        "Political quarrels of the time cost {him} several friendships.",
        "{He} kept a large garden and grew {his} own vegetables.",
        "Late in life {he} lost much of {his} eyesight but continued to work.",
    ],
    "person:painter": ["{His} palette grew darker in later years.", "{He} often painted outdoors, even in winter.",
                       "Many of {his} sketchbooks survive in private collections.",
                       "{He} made a living for years by painting portraits of merchants."],
    "person:novelist": ["{He} wrote in the early morning before going to work.", "{His} prose is plain and precise.",
                        "Several of {his} books were turned into plays.", "{His} early stories appeared in newspapers."],
    "person:composer": ["{His} songs remain popular with amateur choirs.", "{He} was also a gifted pianist.",
                        "{He} wrote slowly and revised constantly.", "Much of {his} church music is still performed."],
    "person:poet": ["{His} verse is simple in form and rich in images.", "{He} also translated poetry from several languages.",
                    "Schoolchildren still learn some of {his} poems by heart.", "{He} read {his} poems aloud in taverns and markets."],
    "person:engineer": ["{He} held patents for several smaller devices.", "{He} was a careful draughtsman and a patient tester.",
                        "{His} workshop employed a dozen mechanics at its height.", "{He} often complained that others profited from {his} ideas."],
    "person:explorer": ["{He} was known for travelling light, with a single guide.", "{His} field notes describe the villages along the way.",
                        "Fever nearly ended one of {his} journeys.", "{His} maps remained in use for decades."],
    "person:architect": ["{He} favoured brick and local stone over imported marble.", "{His} buildings are known for their steep roofs.",
                         "{He} also designed several country houses.", "{He} took part in many competitions, winning few of them."],
    "person:botanist": ["{He} kept a large herbarium of pressed plants.", "{He} corresponded with gardeners across the continent.",
                        "Several plants are named in {his} honour.", "{He} walked thousands of miles collecting specimens."],
    "invention": [
        "Early versions were expensive and needed careful maintenance.",
        "The design was copied widely, often without credit to its inventor.",
        "Surviving examples can be seen in several museums.",
        "Improvements over the following decades made it smaller and more reliable.",
        "Its principle was simple, which helped it spread quickly.",
        "Workshops in several towns soon produced their own versions.",
        "Some users complained at first that it was difficult to adjust.",
        "Contemporary newspapers described it as a small marvel.",
        "Its success encouraged a wave of similar devices.",
        "Collectors today prize the finely decorated early models.",
    ],
    "club": [
        "The club's youth academy has produced many players for the national team.",
        "Attendance rose sharply after the ground was covered.",
        "Supporters are known for their songs and their loyalty in lean years.",
        "The club also runs a women's team and a junior section.",
        "Financial trouble nearly forced the club to close at one point.",
        "The club badge shows the town's coat of arms.",
        "The team moved between the first and second divisions for many years.",
        "Training takes place at a small ground on the edge of town.",
        "Matches against local rivals regularly draw the largest crowds of the season.",
        "A museum under the main stand displays old shirts and trophies.",
    ],
}


# ---------------------------------------------------------------------------------------------
# Names and facts, each unique across the whole sample (a year or name answering one question
# should not turn up by chance in unrelated passages)


class Namer:
    def __init__(self, rng):
        self.rng, self.used = rng, set()

    def unique(self, make):
        for _ in range(10000):
            x = make()
            if x.lower() not in self.used:
                self.used.add(x.lower())
                return x
        raise RuntimeError("no unused value left: widen the word lists or the year range")

    def word(self, ends):
        def make():
            while True:
                w = self.rng.choice(ROOTS) + self.rng.choice(ends)
                if not re.search(r"(.)\1\1", w.lower()):
                    return w
        return self.unique(make)

    def pick(self, pool):
        return self.unique(lambda: self.rng.choice(pool))

    def person(self, gender=None):
        gender = gender or self.rng.choice("mf")
        first = self.rng.choice(MALE if gender == "m" else FEMALE)
        return {"name": f"{first} {self.word(SURNAME_ENDS)}", "gender": gender}

    def year(self, lo, hi):
        return self.unique(lambda: str(self.rng.randint(lo, hi)))

    def number(self, lo, hi, step=1):
        return self.unique(lambda: f"{self.rng.randrange(lo, hi, step):,}")


def article(word):
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def demonym(name):
    return name + "n"  # every country name ends in -a: Velmora -> Velmoran


# ---------------------------------------------------------------------------------------------
# Passages: a list of sentences (some stating a fact a question asks about), topped up with filler


class Draft:
    def __init__(self, title, kind, pronouns=None):
        self.title, self.kind, self.pronouns = title, kind, pronouns or {}  # kind: key of FILLERS
        self.sentences, self.questions = [], []

    def add(self, sentence, *questions):
        """questions: what this sentence answers, from ask()."""
        self.sentences.append(sentence)
        self.questions.extend(questions)


def ask(rng, templates, answer, broad=False, **slots):
    """(question, answer, broad, relation): the first template names the relation."""
    return rng.choice(templates).format(**slots).lower(), answer, broad, templates[0]


def finish(rng, draft):
    """Insert filler sentences after the first sentence until the passage has enough words."""
    sentences = list(draft.sentences)
    target = rng.randint(MIN_WORDS + 2, MIN_WORDS + 30)
    base = draft.kind.split(":")[0]  # "person:painter" also draws on the painter sentences
    pool = FILLERS[base] + (FILLERS[draft.kind] if draft.kind != base else [])
    fillers = [f.format(**draft.pronouns) for f in pool]
    rng.shuffle(fillers)
    while len(" ".join(sentences).split()) < target and fillers:
        filler = fillers.pop()
        if len(" ".join(sentences + [filler]).split()) > MAX_WORDS:
            break
        sentences.insert(rng.randint(1, len(sentences)), filler)
    text = " ".join(sentences)
    words = len(text.split())
    assert MIN_WORDS <= words <= MAX_WORDS, (draft.title, words, text)
    return text


# ---------------------------------------------------------------------------------------------
# The world


def build_world(rng):
    nm = Namer(rng)
    seas = [nm.unique(lambda: rng.choice(["the Sea of {}", "the {} Gulf", "Lake {}"]).format(rng.choice(ROOTS) + rng.choice(RIVER_ENDS)))
            for _ in range(4)]
    countries = []
    for i in range(8):
        name = nm.word(COUNTRY_ENDS)
        form, male_title, female_title = rng.choice(FORMS)
        head = nm.person()
        countries.append(dict(
            name=name, demonym=demonym(name), form=form, sea=rng.choice(seas),
            head=head["name"], head_title=male_title if head["gender"] == "m" else female_title,
            head_year=nm.year(1975, 2022), language=nm.word(LANGUAGE_ENDS), currency=nm.word(CURRENCY_ENDS).lower(),
            currency_year=nm.year(1820, 1990), population=f"{rng.randint(11, 98) / 10:.1f} million",
            founder=nm.person()["name"], founder_role=rng.choice(FOUNDER_ROLES), founded=nm.year(880, 1450),
            treaty_year=nm.year(1450, 1880), constitution=nm.year(1800, 1995),
            area=nm.number(21000, 240000, 100), peak="Mount " + nm.word(PEAK_ENDS), peak_height=nm.number(1800, 4800),
            climate=rng.choice(CLIMATES), export=nm.pick(EXPORTS), dish=nm.word(DISH_ENDS).lower(),
            dish_description=nm.pick(DISH_DESCRIPTIONS), animal=nm.pick(ANIMALS),
            national_day=nm.unique(lambda: f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"),
            cities=[], rivers=[]))
    for i, c in enumerate(countries):
        c["neighbours"] = [countries[(i - 1) % 8]["name"], countries[(i + 1) % 8]["name"]]

    rivers = []
    for i in range(12):
        country = countries[i % 8]
        river = dict(name=nm.word(RIVER_ENDS), country=country["name"], source="Mount " + nm.word(PEAK_ENDS),
                     mouth=rng.choice(seas), length=nm.number(120, 1400), tributary=nm.word(RIVER_ENDS),
                     explorer=nm.person()["name"], explored=nm.year(1580, 1900), fish=nm.pick(RIVERS_FISH),
                     dam=nm.word(CITY_ENDS), dam_year=nm.year(1900, 1990), cities=[])
        country["rivers"].append(river)
        rivers.append(river)

    cities = []
    for country in countries:
        for j in range(3):
            name = nm.word(CITY_ENDS)
            river = rng.choice(country["rivers"])
            architect = nm.person()
            city = dict(
                name=name, country=country["name"], capital=j == 0, river=river["name"],
                region=rng.choice(["the north of", "the south of", "the east of", "the west of", "central"]),
                founded=nm.year(700, 1650), founder=nm.person()["name"], purpose=rng.choice(CITY_PURPOSES),
                charter=nm.year(1100, 1800), fire=nm.year(1480, 1880),
                population=nm.number(600000, 900000, 100) if j == 0 else nm.number(40000, 550000, 100),  # capital largest
                mayor=nm.person()["name"], industry=nm.pick(INDUSTRIES), university=nm.year(1300, 1960),
                field=rng.choice(FIELDS), architect=architect["name"], landmark_year=nm.year(1400, 1965),
                festival=nm.unique(lambda: rng.choice(FESTIVALS) + " Festival"), festival_month=rng.choice(MONTHS),
                festival_kind=rng.choice(FESTIVAL_KINDS), club=None)
            city["landmark"] = nm.unique(lambda: rng.choice(LANDMARKS).format(
                city=name, first=rng.choice(MALE + FEMALE), surname=nm.word(SURNAME_ENDS)))
            river["cities"].append(name)
            country["cities"].append(city)
            cities.append(city)
        country["capital"] = country["cities"][0]["name"]

    # People: some are the explorers, architects and inventors named elsewhere
    occupations = ["painter"] * 4 + ["novelist"] * 4 + ["composer"] * 4 + ["poet"] * 3 + ["engineer"] * 6 + \
                  ["explorer"] * 3 + ["architect"] * 3 + ["botanist"] * 3
    inventions = []
    for name, kind, does, answer, questions in INVENTIONS:
        inventions.append(dict(name=name, kind=kind, does=does, answer=answer, questions=questions,
                               inventor=nm.person()["name"], year=nm.year(1650, 1930), city=rng.choice(cities)["name"],
                               adopter=None, adopted=None, material=rng.choice(MATERIALS),
                               successor=nm.word(SURNAME_ENDS) + " " + rng.choice(SUCCESSOR_NOUNS)))
    people = []
    subjects = {k: rng.sample(v, len(v)) for k, v in SUBJECTS.items()}
    explorer_rivers, architect_cities, engineer_inventions = list(rivers[:3]), list(cities[1::8]), list(inventions[:6])
    for occupation in occupations:
        p = nm.person()
        country = rng.choice(countries)
        born = int(nm.year(1450, 1880))
        died = int(nm.unique(lambda: str(born + rng.randint(44, 92))))
        p.update(occupation=occupation, country=country["name"], demonym=country["demonym"],
                 birthplace=rng.choice(country["cities"])["name"], born=str(born), died=str(died),
                 death_city=rng.choice(cities)["name"], parent_job=nm.pick(PARENT_JOBS), field=rng.choice(FIELDS),
                 study_city=rng.choice(cities)["name"], mentor=nm.person()["name"],
                 spouse=nm.person("f" if p["gender"] == "m" else "m")["name"], spouse_job=rng.choice(SPOUSE_JOBS),
                 award=nm.unique(lambda: rng.choice(["the {} Medal", "the Order of the {}", "the {} Prize"]).format(rng.choice(AWARD_NOUNS))),
                 award_year=nm.year(born + 30, min(died, 2020)),
                 work_year=nm.year(born + 22, min(died - 5, 1960)), museum_year=nm.year(died + 1, min(died + 150, 2023)))
        if occupation == "explorer":
            river = explorer_rivers.pop()
            river["explorer"], river["explored"] = p["name"], p["work_year"]
            p["river"] = river["name"]
        elif occupation == "architect":
            city = architect_cities.pop()
            city["architect"], city["landmark_year"] = p["name"], p["work_year"]
            p["landmark"], p["landmark_city"] = city["landmark"], city["name"]
        elif occupation == "engineer":
            inv = engineer_inventions.pop()
            inv["inventor"], inv["year"] = p["name"], p["work_year"]
            p["invention"] = inv["name"]
        elif occupation == "botanist":
            p["work"] = nm.unique(lambda: f"{rng.choice(PLANT_ADJ)} {rng.choice(PLANT_NOUN)}")
        else:
            p["work"] = nm.unique(lambda: f"The {rng.choice(TITLE_ADJ)} {rng.choice(TITLE_NOUN)}")
            p["venue"] = rng.choice(cities)["name"]
            if occupation in SUBJECTS:
                p["subject"], p["subject_q"] = subjects[occupation].pop()
        people.append(p)

    for inv in inventions:
        country = rng.choice(countries)
        inv["adopter"] = rng.choice(ADOPTERS).format(country=country["name"], city=rng.choice(country["cities"])["name"])
        inv["adopted"] = nm.year(int(inv["year"]) + 2, min(int(inv["year"]) + 60, 2020))

    clubs = []
    for city in rng.sample(cities, 12):
        name = nm.unique(lambda: rng.choice(CLUB_FORMS).format(city=city["name"]))
        nickname, origin = NICKNAMES[len(clubs)]
        founded = int(nm.year(1860, 1930))
        c1, c2 = rng.sample(COLOURS, 2)
        club = dict(name=name, city=city["name"], country=city["country"], founded=str(founded),
                    founder=nm.person()["name"], founder_group=rng.choice(CLUB_FOUNDERS), nickname=nickname,
                    nickname_origin=origin, colours=nm.unique(lambda: f"{c1} and {c2}"),
                    stadium=nm.unique(lambda: rng.choice(STADIUMS).format(surname=nm.word(SURNAME_ENDS))),
                    stadium_year=nm.year(founded + 5, 1995), capacity=nm.number(8000, 60000, 50),
                    titles=nm.pick(NUMBER_WORDS), last_title=nm.year(founded + 20, 2023),
                    scorer=nm.person("m")["name"], goals=nm.number(120, 420), coach=nm.person()["name"],
                    derby=nm.unique(lambda: rng.choice(DERBY_NOUNS) + " Derby"))
        city["club"] = name
        clubs.append(club)
    for i, club in enumerate(clubs):  # rivals in pairs (0, 1), (2, 3), ... sharing one derby name
        club["rival"], club["derby"] = clubs[i ^ 1]["name"], clubs[i & ~1]["derby"]
    return countries, cities, rivers, people, inventions, clubs


# ---------------------------------------------------------------------------------------------
# One function per kind of entity: its passages, each with the questions it answers


def country_passages(rng, c):
    n = c["name"]
    s = lambda templates, **kw: rng.choice(templates).format(**c, **kw)  # noqa: E731
    overview = Draft(n, "country")
    overview.add(s(["{name}, officially the {form} of {name}, is a country on the shores of {sea}.",
                    "{name} ({form} of {name}) is a small country bordering {sea}.",
                    "The {form} of {name}, usually called simply {name}, is a country facing {sea}."]))
    overview.add(s(["Its seat of government is {capital}, which is also its largest city.",
                    "The national parliament and most ministries sit in {capital}, by far the largest city.",
                    "Government offices, the supreme court and the parliament are all located in {capital}."]),
                 ask(rng, ["what is the capital of {n}", "which city is the capital of {n}",
                           "what is the capital city of {n}"], c["capital"], broad=True, n=n))
    overview.add(s(["Most of the {population} inhabitants speak {language}, which is taught in every school.",
                    "{language} is the language of the courts, the press and daily life for its {population} people."]),
                 ask(rng, ["what language do people speak in {n}", "what is the official language of {n}",
                           "what language is spoken in {n}"], c["language"], n=n),
                 ask(rng, ["how many people live in {n}", "what is the population of {n}"], c["population"], n=n))
    overview.add(s(["{head} has been {head_title} since {head_year}, a largely ceremonial office.",
                    "Since {head_year} the office of {head_title} has been held by {head}."]),
                 ask(rng, ["who is the head of state of {n}", "who is the current leader of {n}",
                           "who rules {n}"], c["head"], n=n))

    history = Draft(n, "country")
    history.add(s(["The first united {demonym} state was proclaimed in {founded} by {founder}, a {founder_role} who brought the rival towns under one ruler.",
                   "In {founded} {founder}, a {founder_role}, gathered the quarrelling {demonym} lords at a council and was acclaimed as their first ruler."]),
                ask(rng, ["who united {n}", "who was the first ruler of {n}", "who founded the state of {n}"], c["founder"], n=n),
                ask(rng, ["when did {n} become a unified country", "in what year was {n} first unified"], c["founded"], n=n))
    nb = c["neighbours"][0]
    history.add(s(["A long and costly war with {nb} ended with a peace signed in {treaty_year}.",
                   "Fighting with {nb} over the border provinces dragged on until a settlement in {treaty_year}."], nb=nb),
                ask(rng, ["when did the war between {n} and {nb} end", "in what year did {n} make peace with {nb}"],
                    c["treaty_year"], n=n, nb=nb))
    history.add(s(["The present constitution was adopted in {constitution} after a period of unrest.",
                   "A written constitution, still in force, was approved by an elected assembly in {constitution}."]),
                ask(rng, ["in what year did {n} get its current constitution", "how old is the constitution of {n}"],
                    c["constitution"], n=n))

    geography = Draft(n, "country")
    geography.add(s(["{name} covers {area} square kilometres and shares borders with {n1} and {n2}.",
                     "With an area of {area} square kilometres, the country lies between {n1} and {n2}."],
                    n1=c["neighbours"][0], n2=c["neighbours"][1]),
                  ask(rng, ["how big is {n}", "what is the total area of {n}", "how large is {n} in area"], c["area"], n=n))
    geography.add(s(["The land rises to {peak_height} metres at {peak}, its highest summit.",
                     "No summit in the country is higher than {peak}, which reaches {peak_height} metres."]),
                  ask(rng, ["what is the highest mountain in {n}", "what is the tallest peak in {n}"], c["peak"], n=n),
                  ask(rng, ["how tall is {p}", "what is the elevation of {p}"], c["peak_height"], p=c["peak"]))
    longest = max(c["rivers"], key=lambda r: int(r["length"].replace(",", "")))
    geography.add(s(["No river in the country runs further than the {r}, which crosses it from the hills to the coast.",
                     "The {r} drains most of the interior and is the country's principal waterway."], r=longest["name"]),
                  ask(rng, ["what is the longest river in {n}", "what is the main river of {n}"], longest["name"], broad=True, n=n))
    geography.add(s(["The climate is {climate}."]))

    economy = Draft(n, "country")
    economy.add(s(["The economy of {name} rests on farming, small industry and trade across {sea}.",
                   "{name} has a mixed economy in which farming, trade and small workshops all play a part."]))
    economy.add(s(["Since {currency_year} prices have been given in the {currency}, which replaced an older silver coinage.",
                   "The {currency}, divided into a hundred smaller coins, has been legal tender since {currency_year}."]),
                ask(rng, ["what currency is used in {n}", "what is the money of {n} called", "what do people in {n} pay with"],
                    c["currency"], n=n))
    economy.add(s(["Abroad it is best known for its {export}, which makes up the largest share of foreign sales.",
                   "More than a third of its earnings abroad come from {export}."]),
                ask(rng, ["what is the main export of {n}", "what does {n} sell most to other countries"], c["export"], n=n))
    economy.add(s(["Festive meals centre on {dish}, {dish_description}.",
                   "Few meals are as closely tied to the country as {dish}, {dish_description}."]),
                ask(rng, ["what is the national dish of {n}", "what traditional food is {n} known for"], c["dish"], n=n))
    economy.add(s(["The {animal} appears on the coat of arms and on most coins.",
                   "Its heraldic emblem is the {animal}, shown on the flag and the coinage."]),
                ask(rng, ["what is the national animal of {n}", "what animal is the symbol of {n}"], c["animal"], n=n))
    economy.add(s(["Independence is celebrated every year on {national_day} with parades in every town.",
                   "The national holiday falls on {national_day}, the anniversary of independence."]),
                ask(rng, ["when is the national day of {n}", "on what date does {n} celebrate its independence"],
                    c["national_day"], n=n))
    return [overview, history, geography, economy]


def city_passages(rng, c):
    n = c["name"]
    s = lambda templates, **kw: rng.choice(templates).format(**c, **kw)  # noqa: E731
    history = Draft(n, "city")
    if c["capital"]:
        history.add(s(["{name} is the capital and largest city of {country}, on the {river}.",
                       "{name} is the capital of {country} and lies on both banks of the {river}."]))
    else:
        history.add(s(["{name} is a city in {region} {country}, on the {river}.",
                       "{name} is a town in {region} {country}, built where the {river} leaves the hills."]),
                    ask(rng, ["what river runs through {n}", "which river flows through {n}"], c["river"], broad=True, n=n),
                    ask(rng, ["which country is {n} in", "in what country is the city of {n}"], c["country"], broad=True, n=n))
    history.add(s(["It was established in {founded} by {founder} as a {purpose}.",
                   "{founder} laid out a {purpose} on the site in {founded}, and the town grew up around it.",
                   "Its origins go back to {founded}, when {founder} built a {purpose} there."]),
                ask(rng, ["who founded {n}", "who was the founder of {n}", "who started the settlement of {n}"], c["founder"], n=n),
                ask(rng, ["when was {n} founded", "how old is the city of {n}", "in what year was {n} founded"], c["founded"], n=n))
    history.add(s(["It was granted town rights in {charter}.", "A royal charter of {charter} gave it the rights of a town."]),
                ask(rng, ["when did {n} become a city", "in what year did {n} receive its city charter"], c["charter"], n=n))
    history.add(s(["A great fire destroyed much of the old town in {fire}.",
                   "Much of the centre had to be rebuilt after a fire in {fire}."]),
                ask(rng, ["in what year did much of {n} burn down", "when did the great fire of {n} happen"], c["fire"], n=n))

    economy = Draft(n, "city")
    economy.add(s(["Around {population} people live within the city limits.",
                   "The city has a population of about {population}."]),
                ask(rng, ["how many people live in {n}", "how many inhabitants does {n} have"], c["population"], n=n))
    economy.add(s(["The town grew rich on {industry}, which still employs many of its workers.",
                   "For centuries the local economy has depended on {industry}."]),
                ask(rng, ["what industry is {n} known for", "what is the main industry in {n}", "how did {n} make its money"],
                    c["industry"], n=n))
    economy.add(s(["The council is led by the mayor, {mayor}.", "{mayor} heads the elected city council as mayor."]),
                ask(rng, ["who is the mayor of {n}", "who runs the city government of {n}"], c["mayor"], n=n))
    economy.add(s(["Its university, opened in {university}, is best known for {field}.",
                   "The university, founded in {university}, has a well-regarded faculty of {field}."]),
                ask(rng, ["when was the university of {n} established", "how old is the university in {n}"], c["university"], n=n))

    culture = Draft(n, "city")
    landmark = c["landmark"]
    culture.add(s(["The best-known building is {landmark}, completed in {landmark_year} to designs by {architect}.",
                   "{Landmark} was raised in {landmark_year} to plans drawn up by {architect}.",
                   "The skyline is dominated by {landmark}, the work of {architect}, finished in {landmark_year}."],
                  Landmark=landmark[0].upper() + landmark[1:]),
                ask(rng, ["who designed {l}", "who was the architect of {l}"], c["architect"], l=landmark),
                ask(rng, ["when was {l} built", "in what year was {l} completed"], c["landmark_year"], l=landmark))
    culture.add(s(["Each {festival_month} the city holds the {festival}, {festival_kind}.",
                   "The {festival}, {festival_kind}, takes place every {festival_month}."]),
                ask(rng, ["what festival is held in {n} every {m}", "what is the name of the festival celebrated in {n} in {m}"],
                    c["festival"], n=n, m=c["festival_month"]))
    if c["club"]:
        culture.add(s(["Its football club, {club}, has a loyal following.", "The city is home to the football club {club}."]))
    return [history, economy, culture]


def river_passages(rng, r):
    n = r["name"]
    s = lambda templates, **kw: rng.choice(templates).format(**r, **kw)  # noqa: E731
    towns = ", ".join(r["cities"][:-1]) + " and " + r["cities"][-1] if len(r["cities"]) > 1 else "".join(r["cities"])
    course = Draft(f"{n} River", "river")
    course.add(s(["The {name} is a river of {country}, {length} kilometres long.",
                  "The {name} is a river in {country} with a course of {length} kilometres."]),
               ask(rng, ["how long is the {n} river", "what is the length of the {n}"], r["length"], n=n))
    course.add(s(["It rises on the slopes of {source} and empties into {mouth}.",
                  "From its source high on {source} it flows towards the coast, reaching {mouth} through a wide delta."]),
               ask(rng, ["where does the {n} river begin", "where is the source of the {n}"], r["source"], n=n),
               ask(rng, ["where does the {n} river end", "what body of water does the {n} flow into"], r["mouth"], broad=True, n=n))
    if towns:
        course.add(s(["Along its course it passes {towns}.", "The main towns on its banks are {towns}."], towns=towns))
    course.add(s(["Its largest tributary is the {tributary}, which joins it in the plain.",
                  "The {tributary}, its biggest tributary, brings in snowmelt from the hills."]),
               ask(rng, ["what is the main tributary of the {n}", "which river feeds into the {n}"], r["tributary"], n=n))

    history = Draft(f"{n} River", "river")
    history.add(s(["The first accurate chart of the {name} was drawn by {explorer} in {explored}.",
                   "{explorer} travelled the length of the {name} in {explored} and produced the first reliable map of it."]),
                ask(rng, ["who first mapped the {n} river", "who was the first to survey the {n}"], r["explorer"], n=n),
                ask(rng, ["when was the {n} first mapped", "in what year was the course of the {n} charted"], r["explored"], n=n))
    history.add(s(["Its cold, clean water is known for its {fish}, caught with traditional basket traps.",
                   "Anglers come for the {fish}, which are more plentiful here than anywhere else in the region."]),
                ask(rng, ["what fish is the {n} famous for", "what kind of fish live in the {n}"], r["fish"], n=n))
    history.add(s(["The {dam} Dam, finished in {dam_year}, holds back a long reservoir and supplies electricity to the region.",
                   "Since {dam_year} the {dam} Dam has regulated its flow and generated power."]),
                ask(rng, ["in what year was the {d} dam built", "when did the {d} dam open"], r["dam_year"], d=r["dam"]))
    return [course, history]


def person_passages(rng, p):
    n, pro = p["name"], PRONOUNS[p["gender"]]
    arts = dict(a_parent_job=article(p["parent_job"]), a_spouse_job=article(p["spouse_job"]))
    s = lambda templates, **kw: rng.choice(templates).format(**p, **pro, **arts, **kw)  # noqa: E731
    occ = p["occupation"]
    life = Draft(n, "person:" + occ, pro)
    life.add(s(["{name} ({born}\u2013{died}) was {a_demonym} {occupation}.",
                "{name} ({born}\u2013{died}) was {an_occupation} from {country}."],
               a_demonym=article(p["demonym"]), an_occupation=article(occ)),
             ask(rng, ["when was {n} born", "in what year was {n} born"], p["born"], n=n),
             ask(rng, ["when did {n} die", "in what year did {n} pass away"], p["died"], n=n))
    life.add(s(["{He} grew up in {birthplace}, where {his} father worked as {a_parent_job}.",
                "{His} father was {a_parent_job} in {birthplace}, and {he} spent {his} childhood there."]),
             ask(rng, ["where was {n} born", "what town did {n} grow up in"], p["birthplace"], broad=True, n=n),
             ask(rng, ["what did {n}'s father do for a living", "what was the job of {n}'s father"], p["parent_job"], n=n))
    life.add(s(["{He} studied {field} in {study_city}, where {his} teacher was {mentor}.",
                "As a student of {field} in {study_city} {he} came under the influence of {mentor}."]),
             ask(rng, ["who taught {n}", "who was {n}'s teacher"], p["mentor"], n=n),
             ask(rng, ["which {o} was a pupil of {m}", "who was taught by {m}"], n, o=occ, m=p["mentor"]),
             ask(rng, ["what did {n} study at university", "what subject did {n} study"], p["field"], n=n))

    career = Draft(n, "person:" + occ, pro)
    career.add(s(["{name} began {his} working life as {start}.", "{name} started out as {start}."],
                 start=CAREER_STARTS[occ]))
    work, about = p.get("work"), p.get("subject_q")
    if occ == "painter":
        career.add(s(["{His} best-known canvas, {work}, shows {subject}; it was finished in {work_year} and hangs in a gallery in {venue}.",
                      "{work}, a picture of {subject} completed in {work_year}, is the painting for which {he} is chiefly remembered."]),
                   ask(rng, ["who painted {w}", "who is the artist of the painting {w}"], n, w=work),
                   ask(rng, ["when was {w} painted", "in what year did {n} paint {w}"], p["work_year"], n=n, w=work),
                   ask(rng, ["who painted the picture of {q}", "which artist painted {q}"], n, q=about),
                   ask(rng, ["what is the name of the painting of {q}"], work, q=about))
    elif occ == "novelist":
        career.add(s(["{His} novel {work} ({work_year}) follows {subject}.",
                      "{work}, published in {work_year}, tells the story of {subject}."]),
                   ask(rng, ["who wrote the novel {w}", "who is the author of {w}"], n, w=work),
                   ask(rng, ["when was {w} published", "in what year did {w} first appear"], p["work_year"], w=work),
                   ask(rng, ["who wrote the novel about {q}", "who is the author of the book about {q}"], n, q=about),
                   ask(rng, ["which novel is about {q}", "what book tells the story of {q}"], work, q=about))
    elif occ == "composer":
        career.add(s(["{His} opera {work}, about {subject}, was first staged in {venue} in {work_year}.",
                      "The opera {work}, the story of {subject}, was first performed in {venue} in {work_year} and made {his} name."]),
                   ask(rng, ["who composed the opera {w}", "who wrote the music for {w}"], n, w=work),
                   ask(rng, ["where did {w} premiere", "in which city was {w} first performed"], p["venue"], broad=True, w=work),
                   ask(rng, ["who composed the opera about {q}", "who wrote the music for the opera about {q}"], n, q=about))
    elif occ == "poet":
        career.add(s(["The collection {work}, poems on {subject} issued in {work_year}, brought {him} wide fame.",
                      "{He} became famous with {work}, a book of poems about {subject} published in {work_year}."]),
                   ask(rng, ["who wrote the poems in {w}", "which poet wrote {w}"], n, w=work),
                   ask(rng, ["when was {w} published", "in what year did the poetry collection {w} appear"], p["work_year"], w=work),
                   ask(rng, ["who wrote a book of poems about {q}", "which poet wrote about {q}"], n, q=about))
    elif occ == "engineer":
        career.add(s(["{He} is remembered as the inventor of the {invention}, which {he} built in {work_year}.",
                      "In {work_year} {he} produced the first working {invention}."]),
                   ask(rng, ["what did {n} invent", "what device is {n} known for creating"], p["invention"], n=n))
    elif occ == "explorer":
        career.add(s(["In {work_year} {he} led the first expedition to travel the whole length of the {river}.",
                      "{His} expedition of {work_year} was the first to follow the {river} from source to mouth."]),
                   ask(rng, ["which river did {n} explore", "what river did {n} map"], p["river"], broad=True, n=n))
    elif occ == "architect":
        career.add(s(["{His} best-known building is {landmark} in {landmark_city}, finished in {work_year}.",
                      "Among {his} buildings, {landmark} in {landmark_city} ({work_year}) is the most admired."]),
                   ask(rng, ["what is {n}'s most famous building", "which building in {c} did {n} design"],
                       p["landmark"], n=n, c=p["landmark_city"]))
    else:
        career.add(s(["{He} was the first to describe the {work}, which {he} found in the hills in {work_year}.",
                      "In {work_year} {he} gave the first scientific description of the {work}."]),
                   ask(rng, ["who discovered the {w}", "who first described the {w} plant"], n, w=work),
                   ask(rng, ["when was the {w} first described", "in what year was the {w} discovered"], p["work_year"], w=work))
    career.add(s(["Later {he} became {post}.", "In middle age {he} was appointed {post}."],
                 post=POSTS[occ].format(**p)))

    later = Draft(n, "person:" + occ, pro)
    partner = "husband" if p["gender"] == "m" else "wife"
    later.add(s(["{name} married {spouse}, {a_spouse_job}, and the couple settled in the country.",
                 "{name}'s marriage to the {spouse_job} {spouse} lasted until {his} death."]),
              ask(rng, ["who was {n} married to", "who was the spouse of {n}", "who did {n} marry"], p["spouse"], n=n),
              ask(rng, ["who was the {partner} of {sp}", "which {o} was married to {sp}"], n, sp=p["spouse"], partner=partner, o=occ))
    later.add(s(["In {award_year} {he} received {award}.", "{He} was awarded {award} in {award_year}."]),
              ask(rng, ["what prize did {n} win", "what honour was given to {n}"], p["award"], n=n),
              ask(rng, ["who was given {a} in {y}", "which {o} won {a} in {y}"], n, a=p["award"], y=p["award_year"], o=occ))
    later.add(s(["{He} died in {death_city}.", "{He} spent {his} last years in {death_city}, where {he} died."]),
              ask(rng, ["where did {n} die", "in which city did {n} die"], p["death_city"], broad=True, n=n))
    later.add(s(["A museum devoted to {his} life opened in {birthplace} in {museum_year}.",
                 "Since {museum_year} {his} birthplace has housed a small museum in {his} memory."]),
              ask(rng, ["when did the museum dedicated to {n} open", "in what year did the {n} museum open"], p["museum_year"], n=n))
    return [life, career, later]


def invention_passages(rng, inv):
    n = inv["name"]
    title = n[0].upper() + n[1:]
    s = lambda templates, **kw: rng.choice(templates).format(**inv, **kw)  # noqa: E731
    history = Draft(title, "invention")
    history.add(s([f"The {{name}} is {{a_kind}} that {inv['does']}.",
                   f"A {{name}} is {{a_kind}} which {inv['does']}."], a=inv["answer"], a_kind=article(inv["kind"])),
                ask(rng, inv["questions"], inv["answer"]))
    about = INVENTION_DESCRIPTIONS[n]
    history.add(s(["It was devised by {inventor} in {city} in {year}.",
                   "{inventor}, working in a small workshop in {city}, built the first one in {year}.",
                   "The first example was made in {year} by {inventor}, then living in {city}."]),
                ask(rng, ["who invented the {n}", "who came up with the {n}", "who created the first {n}"], inv["inventor"], n=n),
                ask(rng, ["when was the {n} invented", "in what year was the {n} first made"], inv["year"], n=n),
                ask(rng, ["who invented the device that {d}", "who came up with the machine that {d}"], inv["inventor"], d=about),
                ask(rng, ["when was the device that {d} invented", "in what year was the first machine that {d} made"],
                    inv["year"], d=about))

    use = Draft(title, "invention")
    use.add(s(["Early models were made of {material}, and later ones of lighter metals.",
               "The first ones were built of {material}."]))
    use.add(s(["The {adopter} took it into service in {adopted}, and it soon spread to other users.",
               "It was first used on a large scale by the {adopter}, which ordered dozens in {adopted}."]),
            ask(rng, ["which organisation was the first to use the {n}", "who first adopted the {n}"], inv["adopter"], n=n),
            ask(rng, ["when was the {n} first used on a large scale", "in what year did the {n} come into wide use"],
                inv["adopted"], n=n))
    use.add(s(["It was eventually replaced by the {successor}.", "The {successor} gradually took its place."]),
            ask(rng, ["what replaced the {n}", "what device took over from the {n}"], inv["successor"], n=n))
    return [history, use]


def club_passages(rng, c):
    n = c["name"]
    s = lambda templates, **kw: rng.choice(templates).format(**c, **kw)  # noqa: E731
    history = Draft(n, "club")
    history.add(s(["{name} is a professional football club based in {city}, {country}.",
                   "{name} is a football club from {city} in {country}."]))
    history.add(s(["It was formed in {founded} by {founder_group} led by {founder}.",
                   "{founder} and {founder_group} set up the club in {founded}."]),
                ask(rng, ["when was {n} founded", "how old is {n}"], c["founded"], n=n),
                ask(rng, ["who founded {n}", "who started {n}"], c["founder"], n=n))
    history.add(s(['Supporters call the team "the {nickname}", after the {nickname_origin}.',
                   'The team is known as "the {nickname}", a name taken from the {nickname_origin}.']),
                ask(rng, ["what is the nickname of {n}", "what are {n} players called"], "the " + c["nickname"], n=n),
                ask(rng, ["which football club is nicknamed the {k}", "which team are known as the {k}"], n, k=c["nickname"]))
    history.add(s(["Its players have worn {colours} since the first season.", "The club colours are {colours}."]),
                ask(rng, ["what colours does {n} play in", "what colour shirts does {n} wear"], c["colours"], n=n))

    ground = Draft(n, "club")
    ground.add(s(["Home matches are played at {stadium}, which opened in {stadium_year} and holds {capacity} spectators.",
                  "Since {stadium_year} the club has played at {stadium}, with room for {capacity} people."]),
               ask(rng, ["where does {n} play its home games", "what is the home ground of {n}"], c["stadium"], n=n),
               ask(rng, ["how many people can {st} hold", "what is the capacity of {st}"], c["capacity"], st=c["stadium"]))
    ground.add(s(["The fiercest rivalry is with {rival}, and games between the two are called the {derby}.",
                  "Matches against {rival}, known locally as the {derby}, are the highlight of the season."]),
               ask(rng, ["who are the main rivals of {n}", "which club is the biggest rival of {n}"], c["rival"], broad=True, n=n),
               ask(rng, ["what is the match between {n} and {r} called", "what is the name of the derby between {n} and {r}"],
                   c["derby"], n=n, r=c["rival"]))

    honours = Draft(n, "club")
    honours.add(s(["The club has been national champion {titles} times, most recently in {last_title}.",
                   "It has won the league {titles} times, the last of them in {last_title}."]),
                ask(rng, ["how many league titles has {n} won", "how many times has {n} been champion"], c["titles"], n=n),
                ask(rng, ["when did {n} last win the league", "when was {n}'s most recent championship"], c["last_title"], n=n))
    honours.add(s(["Its record goalscorer is {scorer}, with {goals} goals.",
                   "No player has scored more for the club than {scorer}, who found the net {goals} times."]),
                ask(rng, ["who has scored the most goals for {n}", "who is the all time top scorer of {n}"], c["scorer"], n=n),
                ask(rng, ["how many goals did {sc} score", "how many times did {sc} score for {n}"], c["goals"], n=n, sc=c["scorer"]))
    honours.add(s(["The first team is coached by {coach}.", "{coach} has been in charge of the first team since the last rebuilding."]),
                ask(rng, ["who is the manager of {n}", "who coaches {n}"], c["coach"], n=n))
    return [history, ground, honours]


# ---------------------------------------------------------------------------------------------
# BM25 (Robertson, k1=0.9, b=0.4 as in DPR's Pyserini baseline) for hard negatives

STOPWORDS = set("a an and are as at be by did do does for from has have how in is it its of on or the to was "
                "were what when where which who whom whose why with".split())


def terms(text):
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    def __init__(self, docs, k1=0.9, b=0.4):
        self.docs = [Counter(terms(d)) for d in docs]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / len(self.docs)
        df = Counter(t for d in self.docs for t in d)
        self.idf = {t: math.log(1 + (len(docs) - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query):
        q = [t for t in terms(query) if t not in STOPWORDS and t in self.idf]
        out = []
        for d, length in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            out.append(sum(self.idf[t] * d[t] * (self.k1 + 1) / (d[t] + norm) for t in q if t in d))
        return out


# ---------------------------------------------------------------------------------------------
# Assemble and write


def generate(out_dir=OUT_DIR, seed=SEED):
    rng = random.Random(seed)
    countries, cities, rivers, people, inventions, clubs = build_world(rng)
    entities = [(country_passages, c) for c in countries] + [(city_passages, c) for c in cities] + \
               [(river_passages, r) for r in rivers] + [(person_passages, p) for p in people] + \
               [(invention_passages, i) for i in inventions] + [(club_passages, c) for c in clubs]
    rng.shuffle(entities)  # passages of one article stay together, as in psgs_w100.tsv

    passages, by_relation = [], {}  # passages: (id, text, title); by_relation: relation -> [(question, answers, passage index)]
    for write, entity in entities:
        for draft in write(rng, entity):
            text = finish(rng, draft)
            assert text == text.strip().strip('"') and "\t" not in text and "\n" not in text, text
            for question, answer, broad, relation in draft.questions:
                assert has_answer([answer], text), (question, answer, text)
                if not broad:  # place-name answers occur in many passages: not asked
                    by_relation.setdefault(relation, []).append((question, [answer], len(passages)))
            passages.append((len(passages) + 1, text, draft.title))

    # Relations in weighted random order (key u^(1/w)), favouring common ones and those whose
    # questions do not name the article; up to PER_RELATION questions each, at most one question
    # per passage (so splits never share a gold passage), dealt to the splits by SPLIT_PATTERN.
    def weight(relation, items):
        names_title = passages[items[0][2]][2].lower().removesuffix(" river") in items[0][0]
        return min(len(items), PER_RELATION) * (1 if names_title else INDIRECT_WEIGHT)

    relations = sorted(by_relation, key=lambda r: -rng.random() ** (1 / weight(r, by_relation[r])))
    chosen, used_passages, used_questions = [], set(), set()
    for relation in relations:
        items = rng.sample(by_relation[relation], len(by_relation[relation]))
        taken = [it for it in items if it[2] not in used_passages and it[0] not in used_questions][:PER_RELATION]
        if len(taken) < 4:  # too rare to be learned from: skip
            continue
        for question, answers, idx in taken:
            used_passages.add(idx)
            used_questions.add(question)
        chosen += taken
        if len(chosen) >= N_TRAIN + N_DEV + N_TEST:
            break
    assert len(chosen) >= N_TRAIN + N_DEV + N_TEST, f"only {len(chosen)} questions; add facts"
    splits = {"R": [], "T": [], "D": []}
    for k, item in enumerate(chosen[:N_TRAIN + N_DEV + N_TEST]):
        splits[SPLIT_PATTERN[k % len(SPLIT_PATTERN)]].append(item)
    train, test, dev = (rng.sample(splits[k], len(splits[k])) for k in "RTD")  # relations mixed within a split
    assert (len(train), len(dev), len(test)) == (N_TRAIN, N_DEV, N_TEST)

    bm25 = BM25([f"{title} {text}" for _, text, title in passages])

    def ctx(idx, score, title_score):
        pid, text, title = passages[idx]
        return {"title": title, "text": text, "score": score, "title_score": title_score, "passage_id": str(pid)}

    def biencoder(split):
        records = []
        for question, answers, gold in split:
            scores = bm25.scores(question)
            ranked = sorted(range(len(passages)), key=lambda i: (-scores[i], i))
            no_answer = (i for i in ranked if i != gold and not has_answer(answers, passages[i][1]))
            hard = [next(no_answer) for _ in range(N_HARD_NEGATIVES)]
            shuffled = rng.sample(range(len(passages)), len(passages))
            no_answer = (i for i in shuffled if i != gold and i not in hard and not has_answer(answers, passages[i][1]))
            negatives = [next(no_answer) for _ in range(N_NEGATIVES)]
            records.append({
                "dataset": "nanodpr_sample",
                "question": question,
                "answers": answers,
                "positive_ctxs": [ctx(gold, 1000, 1)],
                "negative_ctxs": [ctx(i, round(scores[i], 4), 0) for i in negatives],
                "hard_negative_ctxs": [ctx(i, round(scores[i], 4), 0) for i in hard],
            })
        return records

    os.makedirs(out_dir, exist_ok=True)
    with open_atomic(os.path.join(out_dir, "psgs.tsv")) as f:
        # psgs_w100.tsv style: text always quoted (inner quotes doubled), title quoted only when needed
        f.write("id\ttext\ttitle\n")
        title_writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for pid, text, title in passages:
            f.write(f'{pid}\t"{text.replace(chr(34), chr(34) * 2)}"\t')
            title_writer.writerow([title])
    for name, split in (("train.json", train), ("dev.json", dev)):
        with open_atomic(os.path.join(out_dir, name)) as f:
            json.dump(biencoder(split), f, indent=2, ensure_ascii=False)
            f.write("\n")
    with open_atomic(os.path.join(out_dir, "test.qa.csv")) as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        for question, answers, _ in test:
            writer.writerow([question, str(answers)])
    return {"passages": len(passages), "train": len(train), "dev": len(dev), "test": len(test)}


@contextlib.contextmanager
def open_atomic(path):
    """Write `path.tmp`, rename on success. (utils.data.atomic_write does the same, but importing
    utils.data pulls in torch; this script needs only the standard library and utils.qa.)"""
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        yield f
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default=OUT_DIR)
    args = parser.parse_args()
    counts = generate(args.output_dir)
    print(f"wrote {counts['passages']} passages, {counts['train']} train, {counts['dev']} dev and "
          f"{counts['test']} test questions to {args.output_dir}")


if __name__ == "__main__":
    main()
