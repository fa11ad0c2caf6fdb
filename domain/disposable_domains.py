"""Disposable email domains: well-known throwaway-inbox services, lowercase."""

from __future__ import annotations

# A curated few hundred of the best-known services (Mailinator, Guerrilla Mail, 10 Minute
# Mail, YOPmail, Temp-Mail, TrashMail and their sister domains). An external validator
# (`type: external`) is the place for a vendor's full, always-current list.
_DOMAINS = """
0815.ru 0clickemail.com 0wnd.net 0wnd.org 10-minute-mail.com 10minmail.de 10minutemail.be
10minutemail.co.uk 10minutemail.co.za 10minutemail.com 10minutemail.de 10minutemail.net
10minutemail.nl 10minutemail.pro 10minutemail.us 10minutemailbox.com 10minutesmail.com
10minutesmail.fr 12minutemail.com 1secmail.com 1secmail.net 1secmail.org 20minutemail.com
20minutemail.it 24hourmail.com 24hourmail.net 30minutemail.com 4warding.com 4warding.net
4warding.org 5minutemail.net 60minutemail.com 675hosting.com 6paq.com 75hosting.com anonbox.net
anonymbox.com antireg.ru antispam.de armyspy.com besttempmail.com binkmail.com bobmail.info
boun.cr bouncr.com bugmenot.com bumpymail.com burnthespam.info byom.de cellurl.com chacuo.net
chammy.info courrieltemporaire.com crapmail.org cuvox.de dayrep.com deadaddress.com despam.it
despammed.com devnullmail.com discard.email discardmail.com discardmail.de disposableaddress.com
disposableemailaddresses.com disposableinbox.com disposemail.com dispostable.com dodgeit.com
dodgit.com dontreg.com dontsendmespam.de dropmail.me dumpmail.de dumpyemail.com e4ward.com
easy-trash-mail.com easytrashmail.com einrot.com email-fake.com emaildrop.io emailfake.com
emailgo.de emailias.com emailinfive.com emailmiser.com emailondeck.com emailsensei.com
emailtemporanea.com emailtemporanea.net emailtemporar.ro emailthe.net emailtmp.com emailto.de
emailwarden.com emailxfer.com emlhub.com emlpro.com emltmp.com ephemail.net explodemail.com
fake-box.com fakedemail.com fakeinbox.com fakemail.fr fakemailgenerator.com fakemailz.com
fexbox.org fexpost.com fextemp.com filzmail.com fivemail.de fleckens.hu forgetmail.com
get2mail.fr getairmail.com getmails.eu getnada.cc getnada.com getonemail.com ghosttexter.de
gishpuppy.com grr.la guerillamail.biz guerillamail.com guerillamail.de guerillamail.info
guerillamail.net guerillamail.org guerillamailblock.com guerrillamail.biz guerrillamail.com
guerrillamail.de guerrillamail.info guerrillamail.net guerrillamail.org guerrillamailblock.com
gustr.com haltospam.com harakirimail.com hatespam.org hidemail.de hmamail.com hochsitze.com
hotpop.com ieatspam.eu ieatspam.info ihateyoualot.info imails.info inboxbear.com inboxclean.com
inboxclean.org inboxkitten.com incognitomail.com incognitomail.net incognitomail.org
instant-mail.de instantemailaddress.com instantmail.fr ipoo.org irish2me.com jetable.com
jetable.net jetable.org jourrapide.com junk1e.com kasmail.com kaspop.com keepmymail.com
killmail.com killmail.net klassmaster.com kulturbetrieb.info kurzepost.de letthemeatspam.com
lhsdv.com link2mail.net litedrop.com lookugly.com lortemail.dk lroid.com lukop.dk m4ilweb.info
mail-temporaire.com mail-temporaire.fr mail1a.de mail2rss.org mail333.com mail4trash.com
mailbidon.com mailblocks.com mailbucket.org mailcatch.com mailchop.com maildrop.cc maildu.de
maildx.com maileater.com mailed.ro mailexpire.com mailf5.com mailforspam.com mailfreeonline.com
mailguard.me mailhazard.com mailhazard.us mailimate.com mailin8r.com mailinater.com
mailinator.co.uk mailinator.com mailinator.info mailinator.net mailinator.org mailinator.us
mailinator2.com mailismagic.com mailme.lv mailme24.com mailmetrash.com mailmoat.com
mailnator.com mailnesia.com mailnull.com mailorg.org mailpick.biz mailpoof.com mailquack.com
mailrock.biz mailsac.com mailscrap.com mailseal.de mailshell.com mailsiphon.com mailslite.com
mailtemp.info mailtemporaire.com mailtemporaire.fr mailto.plus mailtome.de mailtothis.com
mailtrash.net mailtv.net mailzilla.com mailzilla.org meinspamschutz.de meltmail.com
messagebeamer.de mierdamail.com mintemail.com moakt.com mohmal.com monumentmail.com mt2009.com
mt2014.com mvrht.com mvrht.net my10minutemail.com mycleaninbox.net myphantomemail.com
mytemp.email mytempemail.com mytempmail.com mytrashmail.com nada.email neomailbox.com
nervmich.net nervtmich.net netmails.com netmails.net netzidiot.de nobulk.com noclickemail.com
nogmailspam.info nomail2me.com nomorespamemails.com nonspam.eu nonspammer.de nospam4.us
nospamfor.us nospamthanks.info notmailinator.com notsharingmy.info nowmymail.com nurfuerspam.de
objectmail.com obobbo.com odnorazovoe.ru oneoffemail.com oneoffmail.com onewaymail.com opayq.com
ordinaryamerican.net otherinbox.com ourklips.com outlawspam.com owlpic.com pancakemail.com
pimpedupmyspace.com pjjkp.com pokemail.net politikerclub.de poofy.org pookmail.com privacy.net
protempmail.com proxymail.eu punkass.com putthisinyourspamdatabase.com quickinbox.com rcpt.at
reallymymail.com recode.me recyclemail.dk regbypass.com rejectmail.com rhyta.com rmqkr.net
rppkn.com rtrtr.com safersignup.de safetymail.info safetypost.de sandelf.de saynotospams.com
selfdestructingmail.com selfdestructingmail.org sendspamhere.com sharklasers.com shiftmail.com
shitmail.me shitmail.org shortmail.net sinnlos-mail.de skeefmail.com slaskpost.se slopsbox.com
smellfear.com snakemail.com sofimail.com sofort-mail.de sogetthis.com soodonims.com spam.la
spam.su spam4.me spamail.de spamarrest.com spamavert.com spambob.com spambob.net spambob.org
spambog.com spambog.de spambog.net spambog.ru spambooger.com spambox.info spambox.me spambox.us
spamcero.com spamcon.org spamcorptastic.com spamcowboy.com spamcowboy.net spamcowboy.org
spamday.com spamex.com spamfree24.com spamfree24.de spamfree24.eu spamfree24.info spamfree24.net
spamfree24.org spamgoes.in spamherelots.com spamhereplease.com spamhole.com spamify.com
spaminator.de spamkill.info spaml.com spaml.de spammotel.com spamobox.com spamoff.de
spamsalad.in spamslicer.com spamspot.com spamstack.net spamthis.co.uk spamthisplease.com
spamtrail.com spoofmail.de streetwisemail.com stuffmail.de supergreatmail.com supermailer.jp
superrito.com superstachel.de suremail.info tafmail.com teewars.org teleworm.com teleworm.us
temp-mail.com temp-mail.de temp-mail.org temp-mail.ru tempail.com tempalias.com tempemail.biz
tempemail.com tempemail.net tempinbox.co.uk tempinbox.com tempmail.de tempmail.eu tempmail.it
tempmail.us tempmail.ws tempmail2.com tempmailer.com tempmailer.de tempmailo.com tempomail.fr
temporaryemail.net temporaryemail.us temporaryforwarding.com temporaryinbox.com
temporarymailaddress.com tempr.email tempsky.com tempymail.com thankyou2010.com thc.st
thisisnotmyrealemail.com thismail.net throwam.com throwawayemailaddress.com throwawaymail.com
tilien.com tmail.ws tmailinator.com tmails.net tmpbox.net tmpeml.com tmpmail.net tmpmail.org
tokenmail.de toomail.biz tradermail.info trash-mail.at trash-mail.com trash-mail.de trash-me.com
trash2009.com trash2010.com trash2011.com trashcanmail.com trashdevil.com trashdevil.de
trashemail.de trashinbox.com trashmail.at trashmail.com trashmail.de trashmail.io trashmail.me
trashmail.net trashmail.org trashmail.ws trashmailer.com trashmails.com trashymail.com
trashymail.net trillianpro.com twinmail.de uggsrock.com upliftnow.com uplipht.com venompen.com
veryrealemail.com viditag.com vomoto.com vubby.com walala.org walkmail.net webemail.me
webm4il.info wegwerf-email.de wegwerfadresse.de wegwerfemail.com wegwerfemail.de
wegwerfemail.net wegwerfemail.org wegwerfmail.de wegwerfmail.info wegwerfmail.net
wegwerfmail.org wh4f.org whatiaas.com whatpaas.com whopy.com whyspam.me willhackforfood.biz
willselfdestruct.com winemaven.info wronghead.com wuzup.net wuzupmail.net xagloo.com xemaps.com
xents.com xmaily.com yapped.net yep.it yogamaven.com yopmail.com yopmail.fr yopmail.net
yuurok.com zehnminuten.de zehnminutenmail.de zetmail.com zippymail.info zoemail.com zoemail.net
zoemail.org zomg.info
"""

DISPOSABLE_DOMAINS: frozenset[str] = frozenset(_DOMAINS.split())


def is_disposable(domain: str) -> bool:
    """True when `domain` or any domain it is under (`x.mailinator.com`) is disposable."""
    labels = domain.strip().rstrip(".").lower().split(".")
    return any(".".join(labels[i:]) in DISPOSABLE_DOMAINS for i in range(len(labels) - 1))
