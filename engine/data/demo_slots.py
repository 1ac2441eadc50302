"""Localized values for the demo data's runtime slots.

home-assistant-intents leaves ``{area}``, ``{floor}``, ``{name}`` and the wildcard lists
(``{message}``, ``{timer_name}``, ...) empty: Home Assistant fills them from the user's house at run
time. The demo needs concrete words instead, in the sentence's own language, so each language gets a
small hand-written table. Values are base (nominative) forms, as a user would name an area or device.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

# Per Home Assistant language code, seven "|"-separated fields:
#   areas | floors | device names | timer names | list items | broadcast messages | zones
# Device names keep a fixed order so the sentence's domain can pick fitting ones (see _DOMAIN_NAMES):
#   ceiling light, desk lamp, TV, speaker, thermostat, heater, fan, coffee machine
_TABLE: Dict[str, Sequence[str]] = {
    "af": ("kombuis|sitkamer|slaapkamer|kantoor|motorhuis", "grondvloer|eerste verdieping|kelder",
           "plafonlig|tafellamp|televisie|luidspreker|termostaat|verwarmer|waaier|koffiemasjien",
           "pizza|eiers", "melk|brood|eiers|appels", "aandete is gereed", "huis|werk"),
    "ar": ("مطبخ|صالون|مكتب|كراج|حمام", "الطابق الأرضي|الطابق الأول|القبو",
           "ضوء السقف|مصباح المكتب|التلفاز|السماعة|منظم الحرارة|المدفأة|المروحة|آلة القهوة",
           "بيتزا|بيض", "حليب|خبز|بيض|تفاح", "العشاء جاهز", "المنزل|العمل"),
    "bn": ("রান্নাঘর|বসার ঘর|শোবার ঘর|অফিস|গ্যারেজ", "নিচতলা|দোতলা|বেসমেন্ট",
           "সিলিং লাইট|টেবিল ল্যাম্প|টিভি|স্পিকার|থার্মোস্ট্যাট|হিটার|ফ্যান|কফি মেশিন",
           "পিৎজা|ডিম", "দুধ|রুটি|ডিম", "রাতের খাবার তৈরি", "বাড়ি|অফিস"),
    "ca": ("cuina|menjador|dormitori|despatx|garatge", "planta baixa|primer pis|soterrani",
           "llum del sostre|làmpada de l'escriptori|televisió|altaveu|termòstat|estufa|ventilador|cafetera",
           "pizza|pasta|ous", "llet|pa|ous|pomes", "el sopar és a punt", "casa|feina"),
    "cy": ("cegin|lolfa|ystafell wely|swyddfa|garej", "llawr gwaelod|llawr cyntaf|seler",
           "golau nenfwd|lamp desg|teledu|seinydd|thermostat|gwresogydd|ffan|peiriant coffi",
           "pitsa|wyau", "llaeth|bara|wyau|afalau", "mae swper yn barod", "adref|gwaith"),
    "da": ("køkken|stue|soveværelse|kontor|garage", "stueetage|første sal|kælder",
           "loftlampe|skrivebordslampe|fjernsyn|højttaler|termostat|radiator|ventilator|kaffemaskine",
           "pizza|pasta|æg", "mælk|brød|æg|æbler", "aftensmaden er klar|vi tager af sted om fem minutter",
           "hjemme|arbejde"),
    "de": ("Küche|Wohnzimmer|Schlafzimmer|Büro|Garage", "Erdgeschoss|Obergeschoss|Keller",
           "Deckenlampe|Schreibtischlampe|Fernseher|Lautsprecher|Thermostat|Heizung|Ventilator|Kaffeemaschine",
           "Pizza|Nudeln|Eier", "Milch|Brot|Eier|Äpfel", "das Essen ist fertig|wir fahren in fünf Minuten los",
           "Zuhause|Arbeit"),
    "el": ("κουζίνα|σαλόνι|κρεβατοκάμαρα|γραφείο|γκαράζ", "ισόγειο|πρώτος όροφος|υπόγειο",
           "φωτιστικό οροφής|φωτιστικό γραφείου|τηλεόραση|ηχείο|θερμοστάτης|θερμάστρα|ανεμιστήρας|καφετιέρα",
           "πίτσα|αυγά", "γάλα|ψωμί|αυγά|μήλα", "το φαγητό είναι έτοιμο", "σπίτι|δουλειά"),
    "en": ("kitchen|living room|bedroom|office|garage", "ground floor|first floor|basement",
           "ceiling light|desk lamp|TV|speaker|thermostat|heater|fan|coffee machine",
           "pizza|pasta|eggs", "milk|bread|eggs|apples", "dinner is ready|we are leaving in five minutes",
           "home|work"),
    "es": ("cocina|salón|dormitorio|despacho|garaje", "planta baja|primer piso|sótano",
           "lámpara del techo|lámpara del escritorio|televisión|altavoz|termostato|calefactor|ventilador|cafetera",
           "pizza|pasta|huevos", "leche|pan|huevos|manzanas", "la cena está lista|salimos en cinco minutos",
           "casa|trabajo"),
    "fa": ("آشپزخانه|اتاق نشیمن|اتاق خواب|دفتر|پارکینگ", "طبقه همکف|طبقه اول|زیرزمین",
           "چراغ سقفی|چراغ مطالعه|تلویزیون|بلندگو|ترموستات|بخاری|پنکه|قهوه‌ساز",
           "پیتزا|تخم‌مرغ", "شیر|نان|تخم‌مرغ", "شام آماده است", "خانه|محل کار"),
    "fi": ("keittiö|olohuone|makuuhuone|työhuone|autotalli", "pohjakerros|yläkerta|kellari",
           "kattovalo|työpöytävalaisin|televisio|kaiutin|termostaatti|lämmitin|tuuletin|kahvinkeitin",
           "pizza|pasta|kananmunat", "maito|leipä|kananmunat|omenat", "ruoka on valmista", "koti|työ"),
    "fr": ("cuisine|salon|chambre|bureau|garage", "rez-de-chaussée|premier étage|sous-sol",
           "plafonnier|lampe de bureau|télévision|enceinte|thermostat|radiateur|ventilateur|machine à café",
           "pizza|pâtes|œufs", "lait|pain|œufs|pommes", "le dîner est prêt|nous partons dans cinq minutes",
           "maison|travail"),
    "he": ("מטבח|סלון|חדר שינה|משרד|חניה", "קומת קרקע|קומה ראשונה|מרתף",
           "מנורת תקרה|מנורת שולחן|טלוויזיה|רמקול|תרמוסטט|תנור חימום|מאוורר|מכונת קפה",
           "פיצה|ביצים", "חלב|לחם|ביצים|תפוחים", "ארוחת הערב מוכנה", "בית|עבודה"),
    "hi": ("रसोई|बैठक|शयनकक्ष|दफ़्तर|गैराज", "भूतल|पहली मंज़िल|तहख़ाना",
           "छत की लाइट|टेबल लैंप|टीवी|स्पीकर|थर्मोस्टैट|हीटर|पंखा|कॉफ़ी मशीन",
           "पिज़्ज़ा|अंडे", "दूध|ब्रेड|अंडे", "खाना तैयार है", "घर|दफ़्तर"),
    "hu": ("konyha|nappali|hálószoba|dolgozószoba|garázs", "földszint|emelet|pince",
           "mennyezeti lámpa|asztali lámpa|tévé|hangszóró|termosztát|fűtőtest|ventilátor|kávéfőző",
           "pizza|tojás", "tej|kenyér|tojás|alma", "kész a vacsora", "otthon|munkahely"),
    "hy": ("խոհանոց|հյուրասենյակ|ննջասենյակ|աշխատասենյակ|ավտոտնակ", "առաջին հարկ|երկրորդ հարկ|նկուղ",
           "առաստաղի լույս|սեղանի լամպ|հեռուստացույց|բարձրախոս|ջերմակարգավորիչ|տաքացուցիչ|օդափոխիչ|սրճեփ",
           "պիցցա|ձու", "կաթ|հաց|ձու", "ընթրիքը պատրաստ է", "տուն|աշխատանք"),
    "id": ("dapur|ruang tamu|kamar tidur|ruang kerja|garasi", "lantai dasar|lantai atas|ruang bawah tanah",
           "lampu plafon|lampu meja|TV|speaker|termostat|pemanas|kipas angin|mesin kopi",
           "pizza|telur", "susu|roti|telur", "makan malam sudah siap", "rumah|kantor"),
    "is": ("eldhús|stofa|svefnherbergi|skrifstofa|bílskúr", "jarðhæð|efri hæð|kjallari",
           "loftljós|skrifborðslampi|sjónvarp|hátalari|hitastillir|ofn|vifta|kaffivél",
           "pítsa|egg", "mjólk|brauð|egg|epli", "maturinn er tilbúinn", "heima|vinna"),
    "it": ("cucina|soggiorno|camera da letto|studio|garage", "piano terra|primo piano|cantina",
           "plafoniera|lampada da scrivania|televisore|altoparlante|termostato|stufa|ventilatore|macchina del caffè",
           "pizza|pasta|uova", "latte|pane|uova|mele", "la cena è pronta|partiamo tra cinque minuti",
           "casa|lavoro"),
    "ja": ("キッチン|リビング|寝室|書斎|ガレージ", "1階|2階|地下",
           "シーリングライト|デスクライト|テレビ|スピーカー|サーモスタット|ヒーター|扇風機|コーヒーメーカー",
           "ピザ|卵", "牛乳|パン|卵|りんご", "夕食ができました", "自宅|職場"),
    "ka": ("სამზარეულო|მისაღები|საძინებელი|კაბინეტი|ავტოფარეხი", "პირველი სართული|მეორე სართული|სარდაფი",
           "ჭერის სანათი|მაგიდის ლამპა|ტელევიზორი|დინამიკი|თერმოსტატი|გამათბობელი|ვენტილატორი|ყავის აპარატი",
           "პიცა|კვერცხი", "რძე|პური|კვერცხი", "ვახშამი მზადაა", "სახლი|სამსახური"),
    "kn": ("ಅಡುಗೆಮನೆ|ಹಾಲ್|ಮಲಗುವ ಕೋಣೆ|ಕಚೇರಿ|ಗ್ಯಾರೇಜ್", "ನೆಲ ಮಹಡಿ|ಮೊದಲ ಮಹಡಿ|ನೆಲಮಾಳಿಗೆ",
           "ಸೀಲಿಂಗ್ ಲೈಟ್|ಟೇಬಲ್ ಲ್ಯಾಂಪ್|ಟಿವಿ|ಸ್ಪೀಕರ್|ಥರ್ಮೋಸ್ಟಾಟ್|ಹೀಟರ್|ಫ್ಯಾನ್|ಕಾಫಿ ಮೆಷಿನ್",
           "ಪಿಜ್ಜಾ|ಮೊಟ್ಟೆ", "ಹಾಲು|ಬ್ರೆಡ್|ಮೊಟ್ಟೆ", "ಊಟ ಸಿದ್ಧವಾಗಿದೆ", "ಮನೆ|ಕಚೇರಿ"),
    "ko": ("주방|거실|침실|서재|차고", "1층|2층|지하실",
           "천장 조명|스탠드|티비|스피커|온도 조절기|히터|선풍기|커피 머신",
           "피자|계란", "우유|빵|계란|사과", "저녁 준비됐어요", "집|회사"),
    "lv": ("virtuve|viesistaba|guļamistaba|kabinets|garāža", "pirmais stāvs|otrais stāvs|pagrabs",
           "griestu lampa|galda lampa|televizors|skaļrunis|termostats|sildītājs|ventilators|kafijas automāts",
           "pica|olas", "piens|maize|olas|āboli", "vakariņas ir gatavas", "mājas|darbs"),
    "ml": ("അടുക്കള|സ്വീകരണമുറി|കിടപ്പുമുറി|ഓഫീസ്|ഗാരേജ്", "താഴത്തെ നില|ഒന്നാം നില|നിലവറ",
           "സീലിംഗ് ലൈറ്റ്|ടേബിൾ ലാമ്പ്|ടിവി|സ്പീക്കർ|തെർമോസ്റ്റാറ്റ്|ഹീറ്റർ|ഫാൻ|കോഫി മെഷീൻ",
           "പിസ്സ|മുട്ട", "പാൽ|റൊട്ടി|മുട്ട", "അത്താഴം തയ്യാറാണ്", "വീട്|ഓഫീസ്"),
    "mn": ("гал тогоо|зочны өрөө|унтлагын өрөө|ажлын өрөө|гараж", "нэгдүгээр давхар|хоёрдугаар давхар|подвал",
           "таазны гэрэл|ширээний гэрэл|зурагт|чанга яригч|термостат|халаагуур|сэнс|кофены машин",
           "пицца|өндөг", "сүү|талх|өндөг", "оройн хоол бэлэн боллоо", "гэр|ажил"),
    "ms": ("dapur|ruang tamu|bilik tidur|pejabat|garaj", "tingkat bawah|tingkat atas|bilik bawah tanah",
           "lampu siling|lampu meja|TV|pembesar suara|termostat|pemanas|kipas|mesin kopi",
           "piza|telur", "susu|roti|telur", "makan malam sudah siap", "rumah|pejabat"),
    "nb": ("kjøkken|stue|soverom|kontor|garasje", "første etasje|andre etasje|kjeller",
           "taklampe|skrivebordslampe|TV|høyttaler|termostat|panelovn|vifte|kaffetrakter",
           "pizza|pasta|egg", "melk|brød|egg|epler", "middagen er klar|vi drar om fem minutter", "hjemme|jobb"),
    "nl": ("keuken|woonkamer|slaapkamer|kantoor|garage", "begane grond|eerste verdieping|kelder",
           "plafondlamp|bureaulamp|televisie|speaker|thermostaat|verwarming|ventilator|koffiezetapparaat",
           "pizza|pasta|eieren", "melk|brood|eieren|appels", "het eten is klaar|we vertrekken over vijf minuten",
           "thuis|werk"),
    "pl": ("kuchnia|salon|sypialnia|biuro|garaż", "parter|piętro|piwnica",
           "lampa sufitowa|lampka biurkowa|telewizor|głośnik|termostat|grzejnik|wentylator|ekspres do kawy",
           "pizza|makaron|jajka", "mleko|chleb|jajka|jabłka", "obiad gotowy|wychodzimy za pięć minut",
           "dom|praca"),
    "pt": ("cozinha|sala de estar|quarto|escritório|garagem", "rés-do-chão|primeiro andar|cave",
           "candeeiro de teto|candeeiro da secretária|televisão|coluna|termóstato|aquecedor|ventoinha|máquina de café",
           "pizza|massa|ovos", "leite|pão|ovos|maçãs", "o jantar está pronto|saímos daqui a cinco minutos",
           "casa|trabalho"),
    "ro": ("bucătărie|sufragerie|dormitor|birou|garaj", "parter|etajul unu|subsol",
           "lustră|veioză|televizor|boxă|termostat|calorifer|ventilator|espressor",
           "pizza|paste|ouă", "lapte|pâine|ouă|mere", "cina e gata|plecăm în cinci minute", "acasă|serviciu"),
    "ru": ("кухня|гостиная|спальня|кабинет|гараж", "первый этаж|второй этаж|подвал",
           "люстра|настольная лампа|телевизор|колонка|термостат|обогреватель|вентилятор|кофеварка",
           "пицца|макароны|яйца", "молоко|хлеб|яйца|яблоки", "ужин готов|мы выходим через пять минут",
           "дом|работа"),
    "sl": ("kuhinja|dnevna soba|spalnica|pisarna|garaža", "pritličje|prvo nadstropje|klet",
           "stropna luč|namizna svetilka|televizor|zvočnik|termostat|grelec|ventilator|kavni aparat",
           "pica|testenine|jajca", "mleko|kruh|jajca|jabolka", "večerja je pripravljena", "dom|služba"),
    "sv": ("kök|vardagsrum|sovrum|kontor|garage", "bottenvåning|övervåning|källare",
           "taklampa|skrivbordslampa|tv|högtalare|termostat|element|fläkt|kaffebryggare",
           "pizza|pasta|ägg", "mjölk|bröd|ägg|äpplen", "middagen är klar|vi åker om fem minuter",
           "hemma|jobbet"),
    "sw": ("jikoni|sebuleni|chumba cha kulala|ofisi|gereji", "ghorofa ya chini|ghorofa ya kwanza|chini ya ardhi",
           "taa ya dari|taa ya mezani|televisheni|spika|thermostat|hita|feni|mashine ya kahawa",
           "piza|mayai", "maziwa|mkate|mayai", "chakula cha jioni kiko tayari", "nyumbani|kazini"),
    "ta": ("சமையலறை|வரவேற்பறை|படுக்கையறை|அலுவலகம்|கேரேஜ்", "தரை தளம்|முதல் தளம்|அடித்தளம்",
           "மேற்கூரை விளக்கு|மேசை விளக்கு|டிவி|ஸ்பீக்கர்|தெர்மோஸ்டாட்|ஹீட்டர்|மின்விசிறி|காபி இயந்திரம்",
           "பீட்சா|முட்டை", "பால்|ரொட்டி|முட்டை", "இரவு உணவு தயார்", "வீடு|அலுவலகம்"),
    "te": ("వంటగది|హాల్|పడకగది|ఆఫీసు|గ్యారేజ్", "గ్రౌండ్ ఫ్లోర్|మొదటి అంతస్తు|సెల్లార్",
           "సీలింగ్ లైట్|టేబుల్ ల్యాంప్|టీవీ|స్పీకర్|థర్మోస్టాట్|హీటర్|ఫ్యాన్|కాఫీ మెషిన్",
           "పిజ్జా|గుడ్లు", "పాలు|బ్రెడ్|గుడ్లు", "భోజనం సిద్ధంగా ఉంది", "ఇల్లు|ఆఫీసు"),
    "th": ("ห้องครัว|ห้องนั่งเล่น|ห้องนอน|ห้องทำงาน|โรงรถ", "ชั้นล่าง|ชั้นสอง|ชั้นใต้ดิน",
           "ไฟเพดาน|โคมไฟตั้งโต๊ะ|ทีวี|ลำโพง|เทอร์โมสตัท|ฮีตเตอร์|พัดลม|เครื่องชงกาแฟ",
           "พิซซ่า|ไข่", "นม|ขนมปัง|ไข่", "อาหารเย็นพร้อมแล้ว", "บ้าน|ที่ทำงาน"),
    "tr": ("mutfak|oturma odası|yatak odası|çalışma odası|garaj", "zemin kat|birinci kat|bodrum",
           "tavan lambası|masa lambası|televizyon|hoparlör|termostat|ısıtıcı|vantilatör|kahve makinesi",
           "pizza|yumurta", "süt|ekmek|yumurta", "akşam yemeği hazır", "ev|iş"),
    "ur": ("باورچی خانہ|بیٹھک|سونے کا کمرہ|دفتر|گیراج", "گراؤنڈ فلور|پہلی منزل|تہہ خانہ",
           "چھت کی لائٹ|ٹیبل لیمپ|ٹی وی|اسپیکر|تھرموسٹیٹ|ہیٹر|پنکھا|کافی مشین",
           "پیزا|انڈے", "دودھ|روٹی|انڈے", "کھانا تیار ہے", "گھر|دفتر"),
    "vi": ("nhà bếp|phòng khách|phòng ngủ|phòng làm việc|nhà để xe", "tầng trệt|tầng một|tầng hầm",
           "đèn trần|đèn bàn|ti vi|loa|bộ điều nhiệt|máy sưởi|quạt|máy pha cà phê",
           "pizza|trứng", "sữa|bánh mì|trứng|táo", "bữa tối đã sẵn sàng", "nhà|công ty"),
    "zh-CN": ("厨房|客厅|卧室|书房|车库", "一楼|二楼|地下室",
              "吊灯|台灯|电视|音箱|温控器|暖气|风扇|咖啡机",
              "披萨|面条|鸡蛋", "牛奶|面包|鸡蛋|苹果", "晚饭好了|我们五分钟后出发", "家|公司"),
    "zh-TW": ("廚房|客廳|臥室|書房|車庫", "一樓|二樓|地下室",
              "吊燈|檯燈|電視|喇叭|溫控器|暖氣|電風扇|咖啡機",
              "披薩|麵條|雞蛋", "牛奶|麵包|雞蛋|蘋果", "晚餐好了|我們五分鐘後出發", "家|公司"),
}

_FIELDS = ("area", "floor", "name", "timer_name", "item", "message", "zone")

# Which device names (indices into the name field) suit a sentence's domain.
_DOMAIN_NAMES = {"light": (0, 1), "media_player": (2, 3), "climate": (4, 5), "fan": (6,),
                 "switch": (7,), "sensor": (4,)}

# Wildcard and runtime lists -> table field.
_LIST_FIELD = {"area": "area", "floor": "floor", "name": "name", "timer_name": "timer_name",
               "shopping_list_item": "item", "todo_list_item": "item", "message": "message",
               "zone": "zone"}

# Artist names read the same in any language, as people say them.
SEARCH_QUERIES = ("Beethoven", "ABBA", "Queen", "Mozart", "The Beatles", "Vivaldi")

LANGUAGES = frozenset(_TABLE)


def slot_values(language: str, list_name: str, domains: Sequence[str] = ()) -> Optional[List[str]]:
    """Plausible values for a runtime list in ``language``; None when the table has none.

    ``domains`` (from the template's block) narrows device names: a light command gets lamps.
    """
    if list_name == "search_query":
        return list(SEARCH_QUERIES)
    row = _TABLE.get(language)
    field = _LIST_FIELD.get(list_name)
    if row is None or field is None:
        return None
    values = row[_FIELDS.index(field)].split("|")
    if field == "name":
        if "weather" in domains:  # weather entities are named after a place
            return row[_FIELDS.index("zone")].split("|")
        picks = sorted({i for d in domains for i in _DOMAIN_NAMES.get(d, ())})
        if picks:
            values = [values[i] for i in picks]
    return values
