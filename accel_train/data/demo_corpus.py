"""The built-in demo corpus: short children's stories generated from a grammar, byte-tokenized.

It needs no download and is written in seconds. The grammar has a cast with consistent names
and pronouns, ten plots (a lost thing, a new friend, a fear, a quarrel, a hurt animal, a
trip, a build, a surprise, a race, a bedtime), several wordings of every beat, scenes and
dialogue composed word by word, and a few hundred words, so a tiny model's samples read like
stories while the corpus (about 11 MB) is far too varied to memorize: the demo run sees a
fifth of it and its validation loss tracks its training loss. It is written with the same code
as any prepared corpus.
"""

from __future__ import annotations

import random
from pathlib import Path

from accel_train.errors import UserError
from accel_train.data.meta import META_FILE, read_meta
from accel_train.data.dataset import write_dataset
from accel_train.data.tokenizer import ByteTokenizer

GIRLS = ["Lily", "Mia", "Sara", "Anna", "Zoe", "Ella", "Nina", "Ruby", "Lucy", "Ivy", "Emma", "Rosa", "Maya", "Hana",
         "Chloe", "Grace", "Amy", "Lena", "Tara", "Molly", "Daisy", "Kate", "Jenny", "Sophie", "Bella", "Nora",
         "Alice", "Wendy", "Olive", "Fatima", "Yuki", "Clara", "Hazel", "Iris", "Julia", "Priya", "Lola", "Mina"]
BOYS = ["Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Finn", "Oscar", "Theo", "Noah", "Eli", "Omar", "Hugo", "Ravi",
        "Luke", "Adam", "Milo", "Owen", "Kai", "Jonas", "Pablo", "Ted", "Felix", "Danny", "Arlo", "Ezra", "Ivan",
        "Jamal", "Ken", "Liam", "Marco", "Nico", "Peter", "Rami", "Simon", "Toby", "Victor", "Wes"]
GROWNUPS = ["Mom", "Dad", "Grandma", "Grandpa", "Aunt May", "Uncle Bo", "the teacher", "the old farmer"]
ANIMALS = ["cat", "dog", "bird", "rabbit", "frog", "duck", "fox", "bear", "mouse", "turtle", "robin", "puppy", "kitten",
           "squirrel", "goat", "pony", "hedgehog", "bee", "butterfly", "snail", "crab", "deer", "lamb", "chick",
           "hen", "cow", "pig", "seal", "whale", "lizard", "parrot", "tiger", "lion", "monkey", "panda", "bat",
           "donkey", "goose", "sheep", "worm", "beetle", "zebra", "giraffe", "penguin", "kangaroo", "dolphin"]
PET_NAMES = ["Spot", "Fluffy", "Pip", "Biscuit", "Momo", "Rex", "Bubbles", "Coco", "Sunny", "Pepper", "Tiny",
             "Button", "Ziggy", "Honey", "Socks", "Bean"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the farm", "the lake", "the hill", "the market",
          "the school", "the river", "the yard", "the zoo", "the library", "the meadow", "the playground",
          "the old barn", "the harbor", "the pond", "the orchard", "the cave", "the bakery", "the big field",
          "the mountain", "the castle", "the island", "the shop", "the station", "the museum", "the swamp",
          "the kitchen", "the attic", "the camp", "the village", "the desert", "the jungle", "the bridge"]
THINGS = ["ball", "kite", "box", "hat", "book", "boat", "drum", "cup", "shell", "stone", "flower", "toy car",
          "blanket", "map", "key", "bell", "scarf", "robot", "doll", "train", "crayon", "basket", "jar", "ring",
          "sock", "lamp", "puzzle", "whistle", "feather", "teddy bear", "button", "kazoo", "bucket", "spoon",
          "balloon", "paper boat", "pencil", "wagon", "guitar", "shovel", "coin", "mirror", "pillow", "sled",
          "bike", "rope", "clock", "marble", "candle", "net", "backpack", "flag", "tent", "paintbrush"]
LOOKS = ["red", "blue", "green", "yellow", "shiny", "big", "little", "soft", "rusty", "new", "pink", "golden",
         "purple", "striped", "tiny", "round", "fuzzy", "silver", "bright", "sparkly", "spotty", "funny",
         "brown", "white", "black", "heavy", "light", "smooth", "bumpy", "long", "short", "magic", "wooden",
         "warm", "cozy", "gentle", "strange", "lovely", "dusty", "noisy", "wobbly", "pretty", "plain"]
FOODS = ["apples", "cookies", "bread", "soup", "pancakes", "berries", "carrots", "cake", "milk", "honey", "pie",
         "sandwiches", "plums", "rice", "cheese", "muffins", "lemonade", "nuts", "pears", "grapes", "noodles",
         "corn", "peas", "jam", "toast", "eggs", "pizza", "beans", "oranges", "cherries", "waffles", "popcorn"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "curious", "angry", "surprised", "calm",
            "worried", "shy", "brave", "lonely", "silly", "cross", "glad", "sleepy"]
WEATHERS = ["sunny", "rainy", "windy", "cold", "warm", "quiet", "bright", "cloudy", "snowy", "foggy", "hot", "gray"]
OPENINGS = ["One day", "Once upon a time", "One morning", "Last summer", "One evening", "Long ago", "Yesterday",
            "On a {weather} day", "One afternoon", "Every Sunday", "In the spring", "One winter night"]
SAY = ["said", "asked", "shouted", "whispered", "cried", "called", "laughed", "answered", "sighed"]
SKY = ["The sun was high in the sky.", "The wind made the trees dance.", "Rain tapped on the roof.",
       "Birds sang in the trees.", "The air smelled of {food}.", "Big white clouds moved slowly.",
       "Snow covered the ground like a blanket.", "The grass was wet and green.", "It was very quiet."]


def one_of(rng: random.Random, options: list[str], cast: dict) -> str:
    return rng.choice(options).format(**cast)


def make_cast(rng: random.Random) -> dict:
    """The story's characters and props; pronoun keys keep each character's he/she consistent."""
    hero_girl, friend_girl = rng.random() < 0.5, rng.random() < 0.5
    hero = rng.choice(GIRLS if hero_girl else BOYS)
    friend = rng.choice([n for n in (GIRLS if friend_girl else BOYS) if n != hero])
    cast = {"hero": hero, "friend": friend, "grownup": rng.choice(GROWNUPS), "animal": rng.choice(ANIMALS),
            "pet": rng.choice(PET_NAMES), "place": rng.choice(PLACES), "place2": rng.choice(PLACES),
            "thing": rng.choice(THINGS), "look": rng.choice(LOOKS), "food": rng.choice(FOODS),
            "feeling": rng.choice(FEELINGS), "weather": rng.choice(WEATHERS), "say": rng.choice(SAY)}
    for prefix, girl in (("", hero_girl), ("f", friend_girl)):  # {he} {His} for the hero, {fhe} {Fhis} for the friend
        for key, word in zip(("he", "him", "his"), ("she", "her", "her") if girl else ("he", "him", "his")):
            cast[prefix + key], cast[(prefix + key).capitalize()] = word, word.capitalize()
    return cast


def opening(rng: random.Random, c: dict) -> list[str]:
    when = one_of(rng, OPENINGS, c)
    first = one_of(rng, [
        f"{when}, {{hero}} went to {{place}} with {{friend}}.",
        f"{when}, a {{look}} little {{animal}} lived near {{place}}. {{hero}} liked to visit it.",
        f"{when}, {{hero}} woke up early and ran outside.",
        f"{when}, there was a little child named {{hero}}.",
        f"{when}, {{hero}} and {{his}} friend {{friend}} played in {{place}}.",
        f"{when}, {{hero}} had a {{look}} {{thing}} that {{he}} loved very much.",
    ], c)
    lines = [first]
    if rng.random() < 0.6:
        lines.append(one_of(rng, ["It was a {weather} day.", "The day was {weather}.", *SKY], c))
    return lines


# Each plot is a list of beats; each beat is a list of wordings of the same event.
PLOTS = {
    "lost": [
        ["{hero} loved {his} {look} {thing}. {He} took it everywhere.",
         "{hero} had a {look} {thing}. It was {his} favorite thing in the world."],
        ["But one day the {thing} was gone. {hero} looked under the bed and behind the door.",
         "Then the wind blew the {thing} far away, over the fence.",
         "But a naughty {animal} took the {thing} and ran into {place2}.",
         "But {hero} dropped the {thing} in {place2}, and it rolled away."],
        ["\"Where is my {thing}?\" {hero} {say}. {He} felt {feeling}.",
         "{hero} began to cry. \"I want my {thing} back!\"",
         "\"Oh no!\" {hero} {say}. \"My {thing} is lost!\""],
        ["{friend} said, \"Don't worry. I will help you look.\"",
         "{grownup} hugged {him} and said, \"Let us look together.\"",
         "{friend} had an idea. \"Let us follow the little tracks in the mud.\""],
        ["They looked high and low. At last they found the {thing} under a big bush.",
         "They walked to {place2}. There was the {thing}, next to a sleepy {animal}.",
         "Soon {friend} shouted, \"I see it!\" The {thing} was by the water."],
        ["{hero} held the {thing} close and smiled. \"Thank you, {friend},\" {he} said.",
         "{hero} was so happy. From then on, {he} kept the {thing} in a safe place.",
         "They laughed and went home together, and the {thing} was never lost again."],
    ],
    "new_friend": [
        ["{hero} saw a new child at {place}. {Fhe} was sitting alone.",
         "A new family moved in next door. Their child was called {friend}.",
         "At {place}, {hero} met a child who looked {feeling}. {Fhis} name was {friend}."],
        ["{hero} felt shy. {He} did not know what to say.",
         "{hero} wanted to say hello, but {his} cheeks went red.",
         "{hero} watched {friend} for a long time."],
        ["Then {hero} walked over and said, \"Hi! Do you want to play with my {thing}?\"",
         "At last {hero} took a deep breath and said, \"Hello, I am {hero}.\"",
         "{grownup} said, \"Why don't you share your {food} with {fhim}?\" So {hero} did."],
        ["{friend} smiled a big smile. \"Yes, please!\" {fhe} said.",
         "{friend} looked up. \"I am {friend},\" {fhe} said softly.",
         "{friend} laughed. \"You are funny,\" {fhe} said."],
        ["They played all day. They ran, they jumped, and they shared {food}.",
         "They built a little house of sticks and leaves.",
         "They played with the {thing} until the sun went down."],
        ["From that day on, {hero} and {friend} were best friends.",
         "{hero} learned that saying hello can make a new friend.",
         "That night {hero} told {grownup}, \"I have a new friend!\""],
    ],
    "fear": [
        ["{hero} was afraid of the dark cave at the end of {place}.",
         "{hero} did not like big waves. {He} always stayed far from the water.",
         "{hero} was scared of the big {animal} that lived near {place}.",
         "{hero} wanted to climb the tall tree, but {he} was scared."],
        ["\"What if something bad happens?\" {hero} asked.",
         "{His} knees shook and {his} hands were cold.",
         "{He} told {friend}, \"I can't do it. I am too {feeling}.\""],
        ["{grownup} said, \"Being brave does not mean you are not scared.\"",
         "{friend} held {his} hand. \"We can do it together,\" {fhe} {say}.",
         "A little {animal} came by and did not look scared at all."],
        ["So {hero} took one small step, and then another.",
         "{hero} counted to three and went.",
         "{hero} closed {his} eyes, then opened them and went on."],
        ["It was not so bad after all. It was even fun!",
         "Inside, {he} found only a {look} {thing} and a sleepy {animal}.",
         "The {animal} was friendly. It only wanted some {food}."],
        ["{hero} felt proud. \"I was brave!\" {he} {say}.",
         "Now {hero} is not scared anymore, and {he} goes there every day.",
         "{hero} learned that fear gets smaller when you face it."],
    ],
    "quarrel": [
        ["{hero} and {friend} both wanted the {look} {thing}.",
         "{hero} and {friend} were building a tower of blocks at {place}.",
         "{friend} took the last of the {food} and did not share."],
        ["\"It is mine!\" {hero} shouted. \"No, it is mine!\" {friend} shouted back.",
         "They pulled and pulled, and the {thing} broke in two.",
         "{hero} pushed the tower, and it fell down with a crash."],
        ["{friend} ran away and cried. {hero} felt {feeling} and alone.",
         "They did not talk to each other for the rest of the day.",
         "Both of them sat on different sides of {place}, feeling {feeling}."],
        ["{grownup} came and asked, \"What happened here?\"",
         "{hero} thought about it for a long time.",
         "That night {hero} could not sleep. {He} missed {his} friend."],
        ["The next day {hero} went to {friend} and said, \"I am sorry.\"",
         "{hero} said, \"Let us take turns.\" {friend} nodded.",
         "{hero} brought some {food} and shared it with {friend}."],
        ["{friend} smiled. \"I am sorry too,\" {fhe} said. They hugged.",
         "They fixed the {thing} together with glue and tape.",
         "They learned that sharing is better than fighting."],
    ],
    "hurt_animal": [
        ["On the way to {place}, {hero} found a little {animal} on the ground.",
         "{hero} heard a small sound in the grass. It was a {animal}.",
         "Near {place} there was a {animal} with a hurt leg."],
        ["The {animal} could not walk. It looked cold and {feeling}.",
         "\"Poor little {animal},\" {hero} {say}. \"You are hurt.\"",
         "It made a tiny, sad noise."],
        ["{hero} picked it up very gently and put it in {his} basket.",
         "{hero} ran home to get {grownup}.",
         "{hero} and {friend} made a soft bed of leaves for it."],
        ["{grownup} helped wrap the leg. They gave it water and {food}.",
         "Every day {hero} fed the {animal} and talked to it.",
         "They kept it warm by the fire for many days."],
        ["Soon the {animal} was strong again. It jumped and played.",
         "One morning the {animal} was well. It looked at {hero} with bright eyes."],
        ["{hero} let it go at {place}. \"Goodbye, little friend!\" {he} {say}.",
         "The {animal} did not want to leave. It stayed with {hero}, and they called it {pet}.",
         "After that, the {animal} came back to visit {hero} every spring."],
    ],
    "trip": [
        ["{grownup} said, \"Today we will go to {place2}!\"",
         "{hero} and {friend} packed a bag with {food}, a map and a {thing}.",
         "{hero} had never been to {place2}. {He} was very excited."],
        ["They rode a bus, then walked down a long path.",
         "They took a little boat across the river.",
         "The road was long, and {hero} asked, \"Are we there yet?\" many times."],
        ["At {place2} they saw a {look} {animal} and a big old tree.",
         "There were so many things to see: birds, boats and a {look} {thing}.",
         "They found a quiet spot and ate their {food}."],
        ["Then it started to rain, and they had to hide under a tree.",
         "Then {friend} got lost for a moment, but {fhe} was only behind a rock.",
         "Then they climbed to the top of a hill and saw the whole town."],
        ["They laughed and sang songs on the way home.",
         "When they got home, {hero} was tired but happy.",
         "That night {hero} dreamed of {place2}."],
    ],
    "build": [
        ["{hero} wanted to build a {look} boat.",
         "{hero} and {friend} decided to build a house for the {animal}.",
         "{hero} wanted to make a kite that could fly to the clouds."],
        ["They found sticks, string, paper and an old {thing}.",
         "{grownup} gave them glue, nails and some wood.",
         "They collected boxes and {look} paper from the shed."],
        ["The first try fell apart. \"Oh no,\" {friend} {say}.",
         "It did not work. The wind broke it into pieces.",
         "It sank at once. {hero} was {feeling}."],
        ["\"Let us try again,\" {hero} said. \"We can make it stronger.\"",
         "{grownup} said, \"Every builder makes mistakes. Try again.\"",
         "They thought hard and had a new idea."],
        ["The second time it worked! It was the best one in {place}.",
         "This time it was strong and beautiful.",
         "At last it was done. Everyone came to look at it."],
        ["{hero} and {friend} were so proud of their work.",
         "They learned that if you keep trying, you can do it.",
         "The {animal} loved its new home and slept there every night."],
    ],
    "surprise": [
        ["It was {grownup}'s birthday soon. {hero} wanted to make a surprise.",
         "{friend} was sad this week, so {hero} planned a surprise.",
         "{hero} had a secret plan for {place}."],
        ["{hero} asked {friend} to help. \"Shh, it is a secret,\" {he} whispered.",
         "{hero} saved {his} coins for many days.",
         "{hero} picked flowers and baked {food} with {grownup}."],
        ["They made a card with a {look} {animal} on it.",
         "They hid the gift in a {look} box under the bed.",
         "They decorated {place} with paper stars."],
        ["Almost everything went wrong. The {food} burned a little and the dog ate a flower.",
         "Just then the door opened. They had to hide very fast!",
         "The {thing} fell off the table, but nothing broke."],
        ["\"Surprise!\" they shouted. There were smiles everywhere.",
         "When the surprise came, everyone laughed and clapped.",
         "It was the best surprise ever."],
        ["A surprise made with love is the best gift of all.",
         "{hero} felt warm inside. Making others happy made {him} happy too.",
         "They ate {food} and sang until it was late."],
    ],
    "race": [
        ["There was a big race at {place}. {hero} wanted to win.",
         "{hero} and {friend} wanted to see who was faster.",
         "All the children and animals came to {place} for the race."],
        ["{hero} ran every morning to get ready.",
         "{friend} was very fast, and {hero} was a little worried.",
         "A slow {animal} wanted to race too. Everyone laughed, but it did not give up."],
        ["\"Ready, set, go!\" {grownup} shouted, and they were off.",
         "The race began. {hero} ran as fast as {he} could."],
        ["Halfway there, {friend} fell and hurt {fhis} knee.",
         "{hero} saw the {animal} stuck in the mud.",
         "The path was long and {hero} was out of breath."],
        ["{hero} stopped to help. {He} did not think about winning anymore.",
         "{hero} kept going, slow and steady, one step at a time.",
         "{hero} helped {friend} up, and they walked to the end together."],
        ["They did not win, but everyone clapped for them the loudest.",
         "{grownup} said, \"Helping a friend is better than any prize.\"",
         "{hero} learned that slow and steady can win the race.",
         "At the end, they all shared {food} and laughed."],
    ],
    "bedtime": [
        ["It was time for bed, but {hero} was not sleepy at all.",
         "The moon was big and round over {place}.",
         "{hero} lay in bed with {his} {look} {thing}."],
        ["\"Tell me a story, please,\" {hero} asked {grownup}.",
         "{hero} looked out of the window at the stars.",
         "{hero} heard a soft sound outside. It was a little {animal}."],
        ["{grownup} told a story about a {animal} who wanted to fly.",
         "The stars seemed to wink at {him}, one by one.",
         "The {animal} sat on the window and looked at {him}."],
        ["{hero} thought about {friend} and the fun they had at {place}.",
         "\"Good night, moon. Good night, {animal},\" {he} whispered.",
         "{His} eyes felt heavy, and the room was warm and quiet."],
        ["Soon {hero} was fast asleep, dreaming of {food} and {place2}.",
         "{grownup} turned off the light and smiled.",
         "And {hero} slept all night long, happy and safe."],
    ],
}
# Asides composed word by word: a scene (who does what, where, how) and a short exchange of words.
MOVES = ["jumped", "ran", "sang", "danced", "hopped", "rolled", "slept", "played", "sat", "hid", "waited", "laughed",
         "splashed", "climbed", "dug a hole", "walked", "peeked", "spun around", "rested", "looked around",
         "sniffed the air", "found a {thing}", "ate some {food}", "counted the clouds", "chased a {animal}",
         "took a nap", "made a little nest", "sneezed", "stretched", "wiggled"]
WHERE = ["over the fence", "under the table", "in the sun", "by the pond", "near the door", "behind a tree",
         "on the roof", "in the tall grass", "across the road", "around the garden", "up the hill", "into a puddle",
         "next to {hero}", "on a big rock", "in the shade", "under the bridge", "along the river", "by the window",
         "at {place}", "on the path", "in a pile of leaves", "between the flowers"]
HOW = ["slowly", "quickly", "happily", "quietly", "all day", "for a while", "again and again", "with a big smile",
       "very carefully", "without a sound", "one more time", "like a little ball"]
WHO = ["the {animal}", "a little {animal}", "the {look} {animal}", "{friend}", "{grownup}", "{pet} the {animal}",
       "a bird", "the old dog", "a baby {animal}", "{hero}"]
ASKS = ["Can I play with your {thing}?", "Do you want some {food}?", "Where are you going?", "What is that?",
        "Will you help me?", "Can we go to {place2}?", "Why is the {animal} so {feeling}?", "Is it time for {food}?",
        "Do you like my {look} {thing}?", "Who made this?", "Are you {feeling}?", "Can the {animal} come too?"]
REPLIES = ["Yes, of course!", "No, not now.", "Maybe later.", "I don't know.", "Let's find out!", "Sure, here you go.",
           "Only if you share.", "I think so.", "Ask {grownup}.", "Not today, but maybe tomorrow.", "Me too!",
           "Follow me!"]
SHOUTS = ["Look at the {look} {animal}!", "I love {food}!", "This is so much fun!", "Let's go to {place2}!",
          "Watch me!", "I can do it!", "Be careful!", "What a {look} {thing}!", "Hooray!", "Wait for me!"]
MANNER = ["", "", "", " softly", " with a grin", " loudly", " again", " and clapped", " and giggled",
          " in a small voice"]


def scene(rng: random.Random, c: dict) -> str:
    words = [one_of(rng, WHO, c), one_of(rng, MOVES, c), one_of(rng, WHERE, c)]
    words += [rng.choice(HOW)] * (rng.random() < 0.5)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def chat(rng: random.Random, c: dict) -> str:
    a, b = rng.sample([c["hero"], c["friend"], c["hero"], c["friend"], c["grownup"]], 2)
    if a == b or rng.random() < 0.4:
        return f"\"{one_of(rng, SHOUTS, c)}\" {a} {rng.choice(SAY[2:])}{rng.choice(MANNER)}."
    reply = one_of(rng, REPLIES, c)
    reply = reply[:-1] + "," if reply.endswith(".") else reply  # "Maybe later," he said.
    return (f"\"{one_of(rng, ASKS, c)}\" {a} asked{rng.choice(MANNER)}. "
            f"\"{reply}\" {b} {rng.choice(['said', 'answered', 'replied', 'laughed'])}.")


def story(rng: random.Random) -> str:
    """One story: an opening, every beat of one plot in one of its wordings, asides, now and then a new paragraph."""
    cast = make_cast(rng)
    text = " ".join(opening(rng, cast))
    for beat in PLOTS[rng.choice(list(PLOTS))]:
        text += ("\n" if rng.random() < 0.2 else " ") + one_of(rng, beat, cast)
        for aside, chance in ((scene, 0.35), (chat, 0.35)):
            if rng.random() < chance:
                text += " " + aside(rng, cast)
    return text


def stories(count: int, seed: int = 0):
    rng = random.Random(seed)
    return (story(rng) for _ in range(count))


DEMO_DIR = "data/demo"  # relative to the working directory, as out_dir is
GENERATOR = "accel_train.demo_corpus"  # stored in meta.json (the module's old path): kept, so data on disk stays ours
VERSION = 2  # raise it whenever the grammar changes, so that older demo data on disk is written again
DATA_DIR_HINT = "the demo corpus goes only into a new or empty folder: set --data_dir to another one"  # the trainer's


def write_demo_data(data_dir, num_stories: int = 20_000, val_fraction: float = 0.02, seed: int = 0,
                    overwrite: bool = False) -> dict:
    """Write train.bin, val.bin and meta.json of the demo corpus; the folder appears only when complete."""
    source = {"generator": GENERATOR, "version": VERSION, "stories": num_stories, "seed": seed}
    return write_dataset(data_dir, stories(num_stories, seed), ByteTokenizer(), source=source,
                         val_fraction=val_fraction, seed=seed, overwrite=overwrite, exists_hint=DATA_DIR_HINT)


def is_demo_folder(data_dir) -> bool:
    """Only the demo's own folder may be filled with the demo corpus: any other folder that lacks data is
    a mistake (a typo in --data_dir) that the trainer must report, not paper over with stories."""
    return Path(data_dir).resolve() == Path(DEMO_DIR).resolve()


def ensure_demo_data(data_dir) -> None:
    """Write the demo corpus into the demo's folder if it holds no data or an older demo corpus."""
    data_dir = Path(data_dir)
    if not is_demo_folder(data_dir):
        return
    if not (data_dir / "train.bin").exists():
        write_demo_data(data_dir)
        return
    try:
        source = read_meta(data_dir).how.get("source") if (data_dir / META_FILE).is_file() else None
    except UserError:
        return  # not ours to judge: the trainer's own checks report a broken data folder
    older = source == "demo-stories" or (isinstance(source, dict) and source.get("generator") == GENERATOR
                                         and source.get("version") != VERSION)
    if older:
        write_demo_data(data_dir, overwrite=True)
